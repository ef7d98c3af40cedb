"""Checkpoints: self-contained, verified on load, atomic on save, never unpickled."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from charnet import checkpoint as ck
from charnet.checkpoint import ResumeState, find, load_checkpoint, resolve_dir, save_checkpoint
from charnet.config import ModelConfig
from charnet.errors import CheckpointError
from charnet.model import CharRNN
from charnet.tokenizer import Vocab

VOCAB = Vocab.from_chars("abcdefgh \n")


def make(tmp_path, cell="lstm", name="ck", tie=False, **kw):
    torch.manual_seed(0)
    size = 16 if tie else 24
    model = CharRNN(ModelConfig(vocab_size=VOCAB.size, cell=cell, hidden=16, embedding=size, tie_embeddings=tie))
    save_checkpoint(tmp_path / name, model, VOCAB, {"metrics": {"val_loss": 1.0}}, **kw)
    return model, tmp_path / name


@pytest.mark.parametrize("cell", ["rnn", "lstm", "peephole", "gru"])
def test_round_trip_gives_the_same_function(tmp_path, cell):
    model, path = make(tmp_path, cell)
    loaded = load_checkpoint(path)
    idx = torch.randint(0, VOCAB.size, (2, 9))
    model.eval()
    torch.testing.assert_close(loaded.model(idx)[0], model(idx)[0], rtol=0, atol=0)
    assert loaded.vocab.fingerprint == VOCAB.fingerprint
    assert loaded.metrics == {"val_loss": 1.0}
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_tied_and_bf16(tmp_path):
    model, path = make(tmp_path, tie=True, dtype=torch.bfloat16)
    loaded = load_checkpoint(path)
    assert loaded.model.head.weight is loaded.model.embed.weight
    assert loaded.config["dtype"] == "bfloat16"
    assert loaded.model.head.weight.dtype == torch.float32  # computes in float32
    torch.testing.assert_close(loaded.model.embed.weight, model.embed.weight, atol=1e-2, rtol=1e-2)


def test_resume_state_round_trips(tmp_path):
    state = ResumeState({"optim.0.exp_avg": torch.randn(3, 4), "rng.cpu": torch.get_rng_state().unsqueeze(0)},
                        {"step": 7, "param_groups": [{"lr": 0.1, "betas": [0.9, 0.99]}]})
    _, path = make(tmp_path, resume=state)
    loaded = load_checkpoint(path, with_resume=True)
    assert loaded.resume.meta == state.meta
    assert torch.equal(loaded.resume.tensors["optim.0.exp_avg"], state.tensors["optim.0.exp_avg"])


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a charnet checkpoint"):
        load_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:100]), "model.safetensors: truncated or corrupt"),
    (lambda p: (p / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    (lambda p: (p / "config.json").write_text("{not json"), "config.json: corrupt"),
    (lambda p: (p / "config.json").unlink(), "not a charnet checkpoint"),
])
def test_damaged_files_are_named(tmp_path, damage, message):
    _, path = make(tmp_path)
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_flipped_byte_is_caught_by_the_checksum(tmp_path):
    _, path = make(tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data: the header still parses
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_checkpoint(path)


def test_truncated_without_checksums_still_fails_cleanly(tmp_path):
    _, path = make(tmp_path)
    config = json.loads((path / "config.json").read_text())
    del config["files"]
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated or corrupt"):
        load_checkpoint(path)


def test_newer_format_asks_for_an_upgrade(tmp_path):
    _, path = make(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = ck.FORMAT_VERSION + 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="upgrade charnet"):
        load_checkpoint(path)


def test_pickle_payload_never_runs(tmp_path):
    _, path = make(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (path / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    config = json.loads((path / "config.json").read_text())
    del config["files"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_failed_save_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    model, path = make(tmp_path)
    before = {f: (path / f).read_bytes() for f in os.listdir(path)}
    real_write = ck._write
    calls = []

    def failing(target, data):
        calls.append(target.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(target, data)

    monkeypatch.setattr(ck, "_write", failing)
    with pytest.raises(CheckpointError, match="cannot save checkpoint .*No space left on device"):
        save_checkpoint(path, model, VOCAB, {})
    assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary left behind


def test_interrupted_swap_falls_back_to_the_old_copy(tmp_path):
    model, path = make(tmp_path)
    os.replace(path, tmp_path / ".ck.old")  # killed between the two renames
    assert resolve_dir(path) == tmp_path / ".ck.old"
    assert load_checkpoint(path).metrics == {"val_loss": 1.0}
    save_checkpoint(path, model, VOCAB, {"metrics": {"val_loss": 0.5}})
    assert load_checkpoint(path).metrics == {"val_loss": 0.5}
    assert not (tmp_path / ".ck.old").exists()


def test_run_directory_resolves_to_best(tmp_path):
    make(tmp_path / "run", name="best")
    make(tmp_path / "run", name="last")
    assert resolve_dir(tmp_path / "run") == tmp_path / "run" / "best"


def test_find_by_name_lists_what_exists(tmp_path, monkeypatch):
    make(tmp_path / "models", name="poems")
    monkeypatch.setenv("CHARNET_CHECKPOINTS", str(tmp_path / "models"))
    assert find("poems") == (tmp_path / "models" / "poems").resolve()
    with pytest.raises(CheckpointError, match="available names: poems\\)"):
        find("sonnets")  # the variable replaces the default roots: the bundled model is not listed
    make(tmp_path / "more", name="sonnets")
    monkeypatch.setenv("CHARNET_CHECKPOINTS", os.pathsep.join([str(tmp_path / "models"), str(tmp_path / "more")]))
    assert find("sonnets") == (tmp_path / "more" / "sonnets").resolve()
