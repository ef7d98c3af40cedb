"""`charnet export`: smaller weights, same model, nothing but what serving needs."""

from __future__ import annotations

import json

import charnet
from tests.conftest import assert_clean_error, cli


def test_bfloat16_export_halves_the_weights_and_keeps_the_model(capsys, tiny_model, tmp_path, shakespeare_text):
    out = tmp_path / "shipped"
    result = cli(capsys, "export", tiny_model, out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["exported_from"]["path"] == str(tiny_model)
    assert config["metrics"] == json.loads((tiny_model / "config.json").read_text())["metrics"]
    ratio = (out / "model.safetensors").stat().st_size / (tiny_model / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    text = shakespeare_text[-3000:]
    before, after = charnet.load(tiny_model).score(text), charnet.load(out).score(text)
    assert abs(after.bits_per_char - before.bits_per_char) < 0.01


def test_export_refuses_to_overwrite(capsys, tiny_model, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_clean_error(cli(capsys, "export", tiny_model, out), "already holds other files", "--force")
    assert cli(capsys, "export", tiny_model, out, "--force", "--dtype", "float16").returncode == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
