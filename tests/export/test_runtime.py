"""`OnnxModel`: the browser page's generator in Python, against charnet's own engine."""

from __future__ import annotations

import os

import pytest
import torch

from charnet.checkpoint import load_checkpoint, save_checkpoint
from charnet.config import ModelConfig
from charnet.errors import ConfigError
from charnet.export.onnx import export_onnx
from charnet.export.runtime import OnnxModel
from charnet.inference.engine import Engine
from charnet.model import CharRNN
from charnet.tokenizer import Vocab
from tests.conftest import cli


@pytest.fixture(autouse=True)
def float32_engine(monkeypatch):
    # The engine with the export's arithmetic, so the texts compare draw for draw: on a
    # CPU with native bf16 the engine multiplies in bfloat16, and its fused step has a
    # tanh of its own (the export is float32 ONNX ops, as is the aten step).
    monkeypatch.setenv("CHARNET_KERNEL_PRECISION", "float32")
    monkeypatch.setenv("CHARNET_FUSED_STEP", "0")


@pytest.fixture(scope="module")
def onnx_model(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runtime") / "tiny-onnx"
    export_onnx(load_checkpoint(tiny_model), out)
    return OnnxModel.open(out)


def test_greedy_text_equals_charnet_sample(capsys, onnx_model, tiny_model):
    result = cli(capsys, "sample", tiny_model, "--prompt", "ROMEO:", "--temperature", "0", "--length", "200",
                 "--no-echo", "--no-stream")
    assert result.returncode == 0, result.stderr
    text = onnx_model.generate("ROMEO:", max_chars=200, temperature=0)
    assert len(text) == 200 and result.stdout.rstrip("\n") == text.rstrip("\n")
    assert len(set(text)) > 3  # a real continuation, not one character repeated


def test_seeded_sampling_draws_as_the_engine_does(onnx_model, tiny_model):
    # The same uniforms (SplitMix64 of seed and step) and the same filters: the text is
    # the engine's, draw for draw (float32 kernels could flip a draw on a boundary; on
    # these seeds none does). Opened here, not through charnet.load's cache, which may
    # hold an engine another test built with other arithmetic.
    engine = Engine.open(tiny_model)
    settings = [dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8),
                dict(temperature=0.9, top_k=20, top_p=0.9)]
    for seed, kw in enumerate(settings):
        ours = onnx_model.generate("JULIET:", max_chars=300, seed=seed, **kw)
        theirs = engine.generate("JULIET:", max_chars=300, seed=seed, **kw).text
        assert ours == theirs, (seed, kw)
    assert onnx_model.generate("", max_chars=50, seed=4) == engine.generate("", max_chars=50, seed=4).text
    assert onnx_model.generate("JULIET:", max_chars=100, seed=1) != onnx_model.generate("JULIET:", max_chars=100, seed=2)


def test_stop_strings_end_the_text_before_them(onnx_model, tiny_model):
    engine = Engine.open(tiny_model)
    full = onnx_model.generate("ROMEO:", max_chars=400, seed=3)
    assert "\n" in full
    stopped = onnx_model.generate("ROMEO:", max_chars=400, seed=3, stop=("\n", "zz"))
    assert stopped == full[:full.index("\n")]
    assert stopped == engine.generate("ROMEO:", max_chars=400, seed=3, stop=["\n", "zz"]).text


def test_a_byte_vocabulary_decodes_utf8_as_the_engine_does(tmp_path):
    torch.manual_seed(5)
    model = CharRNN(ModelConfig(vocab_size=256, cell="gru", layers=1, hidden=32, embedding=8))
    save_checkpoint(tmp_path / "bytes", model, Vocab.bytes(), {"metrics": {}})
    export_onnx(load_checkpoint(tmp_path / "bytes"), tmp_path / "bytes-onnx")
    onnx = OnnxModel.open(tmp_path / "bytes-onnx")
    assert onnx.encode("é") == [0xC3, 0xA9]
    engine = Engine.open(tmp_path / "bytes")
    for seed in range(3):
        assert onnx.generate("café ", max_chars=120, seed=seed) == engine.generate("café ", max_chars=120,
                                                                                      seed=seed).text


def test_bad_settings_are_refused(onnx_model):
    for kw in (dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_chars=-1), dict(seed=-3)):
        with pytest.raises(ConfigError):
            onnx_model.generate("x", **kw)
    assert os.environ["CHARNET_KERNEL_PRECISION"] == "float32" and os.environ["CHARNET_FUSED_STEP"] == "0"
