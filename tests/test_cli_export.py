"""`charnet export`: smaller weights, same model, nothing but what serving needs."""

from __future__ import annotations

import json
import subprocess
import sys

import charnet
from tests.conftest import Result, assert_clean_error, cli, cli_env


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


def test_onnx_and_web_exports_from_the_command_line(capsys, tiny_model, tmp_path):
    result = cli(capsys, "export", tiny_model, tmp_path / "onnx", "--format", "onnx")
    assert result.returncode == 0, result.stderr
    assert "lstm 2x64, weights in float32" in result.stdout
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["charnet.json", "model.onnx", "tokenizer.json"]
    result = cli(capsys, "export", tiny_model, tmp_path / "site", "--format", "web", "--dtype", "float16")
    assert result.returncode == 0, result.stderr
    assert f"python -m http.server -d {tmp_path / 'site'}" in result.stdout
    assert json.loads((tmp_path / "site" / "model" / "charnet.json").read_text())["dtype"] == "float16"
    assert_clean_error(cli(capsys, "export", tiny_model, tmp_path / "onnx", "--format", "onnx"), "already holds")
    assert_clean_error(cli(capsys, "export", tiny_model, tmp_path / "b", "--format", "onnx", "--dtype", "bfloat16"),
                       "--dtype", "bfloat16 is for checkpoints")


def test_without_the_onnx_extra_the_export_names_it(tiny_model, tmp_path):
    # A fresh interpreter in which onnx cannot be imported (None in sys.modules hides it).
    code = ("import sys; sys.modules['onnx'] = None; from charnet.cli import main; "
            f"main(['export', {str(tiny_model)!r}, {str(tmp_path / 'out')!r}, '--format', 'web'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    assert_clean_error(result, "needs onnx", "pip install 'charnet[onnx]'")
    assert not (tmp_path / "out").exists()
