"""The ONNX export: onnxruntime's logits against torch's over 500 steps for every cell,
a dynamic batch, float16 weights, and a manifest whose checksums are checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from charnet.checkpoint import load_checkpoint, save_checkpoint
from charnet.config import CELLS, ModelConfig
from charnet.errors import CheckpointError
from charnet.export.manifest import MANIFEST, ONNX_MODEL, Manifest
from charnet.export.onnx import export_onnx
from charnet.export.runtime import OnnxModel
from charnet.model import CharRNN
from charnet.tokenizer import Vocab

STEPS = 500
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n"


def checkpoint_of(tmp_path, cell: str, layers: int = 2, hidden: int = 48, seed: int = 0):
    """A randomly initialised checkpoint of `cell`, its weights doubled so that the
    state moves far from zero and the logits spread over several nats, and its
    peepholes (zero at initialisation) set, so that every term of every cell counts.
    (Tripled, the recurrence turns chaotic and float32 rounding alone grows past 1e-4
    over 500 steps, in torch's own float32 as much as in onnxruntime's.)"""
    torch.manual_seed(seed)
    vocab = Vocab.from_chars(TEXT)
    model = CharRNN(ModelConfig(vocab_size=vocab.size, cell=cell, layers=layers, hidden=hidden, embedding=16))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(-0.5, 0.5) if "peephole" in name else p.mul_(2)
    save_checkpoint(tmp_path / cell, model, vocab, {"metrics": {}})
    return load_checkpoint(tmp_path / cell)


def torch_logits(model: CharRNN, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        logits, _ = model(ids)
    return logits.numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for cell in CELLS:
        ckpt = checkpoint_of(root, cell)
        export_onnx(ckpt, root / f"{cell}-onnx")
        out[cell] = (ckpt, OnnxModel.open(root / f"{cell}-onnx"))
    return out


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_logits_match_torch_over_500_steps(exported, cell):
    ckpt, onnx = exported[cell]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, ckpt.vocab.size, (1, STEPS), generator=gen)
    want = torch_logits(ckpt.model, ids)[0]
    state = onnx.zero_state(1)
    worst = 0.0
    for t in range(STEPS):
        logits, state = onnx.step(ids[:, t].numpy(), state)
        worst = max(worst, float(np.abs(logits[0] - want[t]).max()))
    assert worst < 1e-4, f"{cell}: largest logit difference {worst:.2e} over {STEPS} steps"
    assert np.abs(want).max() > 1  # the comparison is of real, non-trivial logits


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_batch_dimension_is_dynamic(exported, cell):
    ckpt, onnx = exported[cell]
    gen = torch.Generator().manual_seed(2)
    for batch in (1, 3, 17):
        ids = torch.randint(1, ckpt.vocab.size, (batch, 40), generator=gen)
        want = torch_logits(ckpt.model, ids)
        state = onnx.zero_state(batch)
        for t in range(ids.shape[1]):
            logits, state = onnx.step(ids[:, t].numpy(), state)
            assert logits.shape == (batch, ckpt.vocab.size)
            np.testing.assert_allclose(logits, want[:, t], atol=1e-4)
        assert [s.shape for s in state] == [(2, batch, 48)] * len(onnx.manifest.state)


def test_manifest_describes_the_graph_and_checks_its_files(exported, tmp_path):
    ckpt, onnx = exported["peephole"]
    m = onnx.manifest
    assert (m.cell, m.layers, m.hidden, m.vocab_size, m.state) == ("peephole", 2, 48, ckpt.vocab.size, ["h", "c"])
    assert m.tokens == ckpt.vocab.listing() and m.unk_id == 0 and m.document_start == ckpt.document_start
    assert m.source["weights_sha256"] == ckpt.config["files"]["model.safetensors"]
    inputs = [i.name for i in onnx.session.get_inputs()]
    outputs = [o.name for o in onnx.session.get_outputs()]
    assert inputs == ["tokens", "h", "c"] and outputs == ["logits", "h_out", "c_out"]

    folder = tmp_path / "damaged"
    export_onnx(ckpt, folder)
    good = (folder / ONNX_MODEL).read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 1
    (folder / ONNX_MODEL).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.onnx: SHA-256 does not match"):
        OnnxModel.open(folder)
    (folder / ONNX_MODEL).write_bytes(good)
    Manifest.read(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json: missing"):
        Manifest.read(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CheckpointError, match="v99 is not one this charnet reads"):
        Manifest.read(folder)


def test_float16_halves_the_file_and_computes_in_float32(tmp_path):
    ckpt = checkpoint_of(tmp_path, "lstm", hidden=128)
    export_onnx(ckpt, tmp_path / "f32")
    export_onnx(ckpt, tmp_path / "f16", "float16")
    ratio = (tmp_path / "f16" / ONNX_MODEL).stat().st_size / (tmp_path / "f32" / ONNX_MODEL).stat().st_size
    assert 0.45 < ratio < 0.55
    half = OnnxModel.open(tmp_path / "f16")
    assert half.manifest.dtype == "float16"
    # Against torch with the same weights rounded to float16: only the rounding differs.
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.copy_(p.half().float())
    ids = torch.randint(1, ckpt.vocab.size, (1, 60), generator=torch.Generator().manual_seed(3))
    want = torch_logits(ckpt.model, ids)[0]
    state = half.zero_state(1)
    for t in range(60):
        logits, state = half.step(ids[:, t].numpy(), state)
        np.testing.assert_allclose(logits[0], want[t], atol=2e-3)
