"""The command line: every bad input is one clear line and exit code 2; help is complete."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys

import pytest

import charnet.cli
from tests.conftest import TINY, Result, assert_clean_error, cli, run_cli


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}



def test_version_and_module_entry_point():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == "charnet 0.1.0"


# -- corpus problems ----------------------------------------------------------------------

def test_missing_path(capsys, tmp_path):
    assert_clean_error(cli(capsys, "train", tmp_path / "nope.txt"), "nope.txt", "no such file or directory")


def test_directory_without_text_files(capsys, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"\x89PNG\0\0")
    assert_clean_error(cli(capsys, "train", tmp_path / "imgs"), "imgs", "no text files")


def test_glob_without_matches(capsys, tmp_path):
    assert_clean_error(cli(capsys, "train", f"{tmp_path}/**/*.py"), "*.py", "matches no files")


def test_empty_corpus(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_clean_error(cli(capsys, "train", tmp_path / "empty.txt", "--out", tmp_path / "r"), "corpus is empty")


def test_corpus_shorter_than_one_batch(capsys, tmp_path):
    """With no options the sizing fits the batch to a small corpus; one given explicitly
    is kept, and too large a one is named."""
    (tmp_path / "short.txt").write_text("just a few words\n" * 10)
    assert_clean_error(cli(capsys, "train", tmp_path / "short.txt", "--batch-size", "64", "--out", tmp_path / "r"),
                       "fewer than one batch needs", "--batch-size")


def test_binary_file(capsys, tmp_path):
    (tmp_path / "model.bin").write_bytes(b"weights\0\1\2")
    assert_clean_error(cli(capsys, "train", tmp_path / "model.bin"), "model.bin", "binary file", "offset 7")


def test_non_utf8_file(capsys, tmp_path):
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    assert_clean_error(cli(capsys, "train", tmp_path / "latin1.txt"), "latin1.txt", "byte offset 3", "--encoding")


# -- invalid option values ----------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--hidden", "-1"], "--hidden"),
    (["--layers", "0"], "--layers"),
    (["--embedding", "0"], "--embedding"),
    (["--batch-size", "0"], "--batch-size"),
    (["--seq-len", "-5"], "--seq-len"),
    (["--dropout", "1.0"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--model", "transformer"], "--model"),
    (["--tokenizer", "word"], "--tokenizer"),
    (["--max-time", "soon"], "--max-time"),
    (["--max-time", "0s"], "--max-time"),
    (["--lr", "-1"], "--lr"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--epochs", "0"], "--epochs"),
    (["--max-steps", "0"], "--max-steps"),
    (["--tie-embeddings", "--hidden", "64", "--embedding", "32"], "--tie-embeddings"),
    (["--device", "tpu"], "--device"),
    (["--encoding", "klingon"], "klingon"),
    (["--no-such-option"], "--no-such-option"),
])
def test_invalid_option_values(capsys, small_corpus, tmp_path, args, fragment):
    result = cli(capsys, "train", small_corpus, "--out", tmp_path / "r", *args)
    assert_clean_error(result, fragment)
    assert not (tmp_path / "r" / "last").exists()


def test_cuda_when_absent(capsys, small_corpus, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert_clean_error(cli(capsys, "train", small_corpus, "--device", "cuda", "--out", tmp_path / "r"), "--device", "cuda")


# -- run directories ----------------------------------------------------------------------

def test_out_holding_another_run(capsys, trained, small_corpus):
    before = digest(trained / "last")
    result = cli(capsys, "train", small_corpus, *TINY, "--max-steps", "5", "--out", trained)
    assert_clean_error(result, str(trained), "--resume", "--force")
    assert digest(trained / "last") == before


def test_force_replaces_and_resume_continues(capsys, trained, small_corpus):
    result = cli(capsys, "train", small_corpus, *TINY, "--max-steps", "30", "--eval-every", "10", "--out", trained, "--resume")
    assert result.returncode == 0, result.stderr
    config = json.loads((trained / "last" / "config.json").read_text())
    assert config["metrics"]["step"] == 30
    # the new budget replaced the old one, and no default time limit slipped in
    assert (config["training"]["max_steps"], config["training"]["max_time"]) == (30, None)
    result = cli(capsys, "train", small_corpus, *TINY, "--max-steps", "10", "--eval-every", "10", "--out", trained, "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads((trained / "last" / "config.json").read_text())["metrics"]["step"] == 10


def test_resume_without_a_run(capsys, small_corpus, tmp_path):
    assert_clean_error(cli(capsys, "train", small_corpus, "--out", tmp_path / "none", "--resume"), "no run to resume")


@pytest.mark.parametrize("option", [["--hidden", "48"], ["--weight-drop", "0.2"], ["--locked-dropout"], ["--tar", "2"]])
def test_resume_with_a_conflicting_option(capsys, trained, small_corpus, option):
    assert_clean_error(cli(capsys, "train", small_corpus, *option, "--out", trained, "--resume"),
                       option[0], "differs from the run")


def test_resume_with_another_corpus(capsys, trained, unicode_corpus):
    assert_clean_error(cli(capsys, "train", unicode_corpus, "--out", trained, "--resume"), "corpus differs")


def test_failed_write_while_saving_keeps_the_good_checkpoint(trained, small_corpus):
    """A real process whose file writes fail past 64 KB (as on a full disk) must report it
    in one line and leave the last good checkpoint exactly as it was."""
    before = digest(trained / "last")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([sys.executable, "-m", "charnet", "train", str(small_corpus), *TINY, "--max-steps", "40",
                           "--eval-every", "10", "--out", str(trained), "--resume"],
                          capture_output=True, text=True, preexec_fn=limit_file_size, env={**os.environ}, timeout=300)
    assert_clean_error(Result(proc.returncode, proc.stdout, proc.stderr), "cannot save checkpoint", "File too large")
    assert digest(trained / "last") == before
    assert sorted(p.name for p in trained.iterdir() if p.name.startswith(".")) == []


# -- eval and info ------------------------------------------------------------------------

def test_eval_reports_bits_per_char_and_unknowns(capsys, trained, unicode_corpus, small_corpus):
    result = cli(capsys, "eval", trained, small_corpus, unicode_corpus, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [f["file"] for f in report["files"]] == [str(small_corpus), str(unicode_corpus)]
    assert report["files"][1]["unknown"] > 0 and report["files"][0]["unknown"] == 0
    assert 0 < report["files"][0]["bits_per_char"] < 8
    assert "not in the model's vocabulary" in result.stderr
    table = cli(capsys, "eval", trained, small_corpus)
    assert "bits/char" in table.stdout and "perplexity" in table.stdout


def test_eval_errors(capsys, trained, tmp_path):
    assert_clean_error(cli(capsys, "eval", tmp_path / "nothing", tmp_path), "no such checkpoint")
    assert_clean_error(cli(capsys, "eval", trained, tmp_path / "missing.txt"), "missing.txt")


def test_info(capsys, trained):
    result = cli(capsys, "info", trained, "--json")
    info = json.loads(result.stdout)
    assert info["model"]["cell"] == "lstm" and info["parameters"] > 1000 and info["vocab_size"] > 50
    assert info["metrics"]["step"] == 20
    assert "parameters" in cli(capsys, "info", trained).stdout


@pytest.mark.parametrize("command", sorted(charnet.cli.cli_command().commands))
def test_help_explains_every_option(command):
    result = run_cli(command, "--help", env={"COLUMNS": "250"})
    assert result.returncode == 0
    click_command = charnet.cli.cli_command().commands[command]
    for param in click_command.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert opt in result.stdout, opt
        if getattr(param, "help", None) is None and param.param_type_name == "option":
            pytest.fail(f"{param.opts} has no help")
    if command == "train":
        assert "512 when --layers, --hidden" in result.stdout and "[default: gru]" in result.stdout


def test_a_directory_with_dangling_links_trains_and_warns(capsys, tmp_path, shakespeare_text):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "plays.txt").write_text(shakespeare_text[:20_000], encoding="utf-8")
    (corpus / "old.txt").symlink_to(tmp_path / "deleted.txt")
    result = cli(capsys, "train", corpus, *TINY, "--max-steps", "2", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert f"warning: skipped {corpus / 'old.txt'}: dangling link" in result.stderr
