"""Checkpoints: self-contained, verified on load, atomic on save, never unpickled."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from charnet import checkpoint as ck
from charnet.checkpoint import ResumeState, find, load_checkpoint, resolve_dir, save_checkpoint
from charnet.config import CELLS, ModelConfig
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


@pytest.mark.parametrize("cell", CELLS)
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


# -- crafted checkpoints ----------------------------------------------------------------------

def _edit_config(path, change) -> None:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def _model(**fields):
    return lambda c: c["model"].update(fields)


CRAFTED = {
    "100,000 layers": _model(layers=100_000),
    "hidden 2^20": _model(hidden=1 << 20),
    "hidden at the cap, tiny weights": _model(hidden=1 << 16),
    "vocabulary at the cap": _model(vocab_size=0x110000),
    "a string for layers": _model(layers="2"),
    "an unknown model setting": _model(depth=3),
    "no model section": lambda c: c.pop("model"),
    "files is null": lambda c: c.update(files=None),
    "files holds a number": lambda c: c.update(files={"model.safetensors": 5}),
    "metrics is a list": lambda c: c.update(metrics=[1, 2]),
    "format_version is a string": lambda c: c.update(format_version="1"),
    "tie_embeddings is a string": _model(tie_embeddings="yes"),
}


def _crafted(tmp_path, kind: str):
    if kind in CRAFTED:
        _, path = make(tmp_path)
        _edit_config(path, CRAFTED[kind])
        return path
    _, path = make(tmp_path)
    if kind == "a config nested 100,000 deep":
        (path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "a config that is an array":
        (path / "config.json").write_text("[1, 2, 3]")
    elif kind == "a tokenizer that is an array":
        (path / "tokenizer.json").write_text("[]")
        _edit_config(path, lambda c: c["files"].pop("tokenizer.json"))
    elif kind == "a tokenizer nested deep":
        (path / "tokenizer.json").write_text('{"model": ' + "[" * 5000 + "]" * 5000 + "}")
        _edit_config(path, lambda c: c["files"].pop("tokenizer.json"))
    elif kind == "a tokenizer of the wrong kind":
        (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"ab": 0}, "merges": []}}))
        _edit_config(path, lambda c: c["files"].pop("tokenizer.json"))
    elif kind in ("NaN weights", "infinite weights"):
        from safetensors.torch import load_file, save_file

        tensors = load_file(path / "model.safetensors")
        tensors["head.bias"][3] = float("nan") if kind == "NaN weights" else float("inf")
        save_file(tensors, path / "model.safetensors")
        _edit_config(path, lambda c: c["files"].pop("model.safetensors"))
    return path


KINDS = [*CRAFTED, "a config nested 100,000 deep", "a config that is an array", "a tokenizer that is an array",
         "a tokenizer nested deep", "a tokenizer of the wrong kind", "NaN weights", "infinite weights"]


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_checkpoints_are_one_line_errors(tmp_path, kind):
    path = _crafted(tmp_path, kind)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value), str(e.value)


@pytest.mark.parametrize("kind", ["100,000 layers", "hidden 2^20", "hidden at the cap, tiny weights",
                                  "vocabulary at the cap", "a config nested 100,000 deep", "NaN weights"])
@pytest.mark.parametrize("command", ["info", "sample"])
def test_crafted_checkpoints_exit_2_in_one_line_within_500_mb(tmp_path, kind, command):
    """Nothing is allocated from config.json before the weights' header agrees with it: a
    checkpoint asking for hundreds of GB costs what a small one costs."""
    import resource
    import subprocess
    import sys

    from tests.conftest import Result, assert_clean_error, cli_env

    path = _crafted(tmp_path, kind)
    args = [command, str(path)] + (["-n", "5"] if command == "sample" else [])
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(p.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "charnet", *args],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert_clean_error(Result(proc.returncode, proc.stdout, proc.stderr), str(path))
    assert int(proc.stdout.split()[-1]) < 500 * 1024, proc.stdout  # KiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_info_shows_a_checkpoint_missing_optional_fields(tmp_path, capsys):
    from tests.conftest import cli

    _, path = make(tmp_path)
    _edit_config(path, lambda c: [c.pop(k, None) for k in ("metrics", "dtype", "charnet_version", "tokenizer")])
    result = cli(capsys, "info", path)
    assert result.returncode == 0, result.stderr
    assert "lstm, 2 x 16 hidden" in result.stdout
