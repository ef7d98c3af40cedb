"""The trainer: every cell learns, runs are reproducible, a killed run resumes exactly."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from charnet.config import CELLS, ModelConfig, TrainConfig
from charnet.training.data import load_corpus
from charnet.device import native_bf16
from charnet.training.optim import lr_at
from charnet.training.trainer import Trainer
from tests.conftest import BUNDLED, TINY, assert_clean_error, cli_env, run_cli


def tiny_run(corpus_path, out, cell="lstm", **train):
    corpus = load_corpus([corpus_path])
    model_cfg = ModelConfig(vocab_size=corpus.vocab.size, cell=cell, hidden=32, embedding=16, layers=2, dropout=0.1)
    cfg = TrainConfig(batch_size=8, seq_len=32, warmup_steps=5, device="cpu", **{"max_steps": 60, "eval_every": 20, **train})
    return Trainer(corpus, model_cfg, cfg, out).fit()


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_trains_and_learns(small_corpus, tmp_path, cell):
    """150 steps of a one-layer model take seconds and get far below the unigram entropy:
    the model has learned which characters follow which, not just their frequencies."""
    corpus = load_corpus([small_corpus])
    model_cfg = ModelConfig(vocab_size=corpus.vocab.size, cell=cell, hidden=64, embedding=32, layers=1, dropout=0.0)
    cfg = TrainConfig(batch_size=16, seq_len=32, warmup_steps=5, lr=1e-2, max_steps=150, eval_every=50, device="cpu")
    result = Trainer(corpus, model_cfg, cfg, tmp_path / cell).fit()
    unigram_nats = corpus.stats.unigram_bits("char") * math.log(2)
    assert result.final_val < unigram_nats - 0.7, (result.final_val, unigram_nats)
    assert result.stopped == "budget" and result.step == 150
    for name in ("best", "last", "loss.png", "metrics.jsonl"):
        assert (tmp_path / cell / name).exists()


def test_same_seed_same_losses(small_corpus, tmp_path):
    tiny_run(small_corpus, tmp_path / "a")
    tiny_run(small_corpus, tmp_path / "b")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("elapsed_s", "chars_per_s")} for r in rs]  # noqa: E731
    assert strip(records(tmp_path / "a")) == strip(records(tmp_path / "b"))
    tiny_run(small_corpus, tmp_path / "c", seed=7)
    assert strip(records(tmp_path / "c")) != strip(records(tmp_path / "a"))


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, max_steps=100)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1.0)  # warmup done
    assert lr_at(cfg, 50, 0.5) == pytest.approx(0.55)
    assert lr_at(cfg, 100, 1.0) == pytest.approx(0.1)


def test_budgets(small_corpus, tmp_path):
    corpus = load_corpus([small_corpus])
    steps = (int(len(corpus) * 0.9) - 1) // 8 // 32
    assert tiny_run(small_corpus, tmp_path / "e", max_steps=None, epochs=1).step == steps
    start = time.monotonic()
    result = tiny_run(small_corpus, tmp_path / "t", max_steps=None, max_time=1.5)
    assert result.stopped == "budget" and 1.5 <= result.elapsed < 10 and time.monotonic() - start < 30


def test_early_stopping(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_validate", lambda self, streams: 2.0)  # never improves after the first
    result = tiny_run(small_corpus, tmp_path / "p", max_steps=1000, eval_every=10, patience=2)
    assert result.stopped == "early stopping" and result.step == 30


def test_no_validation(small_corpus, tmp_path):
    result = tiny_run(small_corpus, tmp_path / "nv", val_fraction=0.0)
    assert result.best_val is None and (tmp_path / "nv" / "last").exists() and not (tmp_path / "nv" / "best").exists()


def _checkpoint_step(run_dir):
    try:
        return json.loads((run_dir / "last" / "config.json").read_text())["metrics"]["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _logged_step(run_dir):
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)
    except OSError:
        return 0


ARGS = [*TINY, "--hidden", "64", "--dropout", "0.2", "--max-steps", "300", "--eval-every", "20", "--seed", "5"]


@pytest.fixture
def run_args(request, small_corpus, unicode_corpus, tmp_path):
    """The corpus and options of a run to kill and resume: running text with every
    regulariser on (restored from the checkpoint, RNG and all), line documents, or
    fine-tuning a parent trained on other text (its vocabulary extended)."""
    if request.param == "files":
        return [small_corpus, *ARGS, "--weight-drop", "0.3", "--locked-dropout", "--input-dropout", "0.1",
                "--embed-dropout", "0.1", "--ar", "1", "--tar", "1"]
    if request.param == "lines":
        return [small_corpus, *ARGS, "--documents", "lines"]
    assert request.param == "init-from"
    parent = run_cli("train", unicode_corpus, *ARGS, "--max-steps", "20", "--out", tmp_path / "parent")
    assert parent.returncode == 0, parent.stderr
    return [small_corpus, *ARGS, "--init-from", tmp_path / "parent"]


@pytest.mark.parametrize("run_args", ["files", "lines", "init-from"], indirect=True)
def test_killed_run_resumes_to_the_same_weights(run_args, tmp_path):
    straight = run_cli("train", *run_args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    # The environment (thread count included) of the straight run: float sums may differ between thread counts.
    proc = subprocess.Popen([sys.executable, "-m", "charnet", "train", *map(str, run_args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    deadline = time.monotonic() + 120
    while _checkpoint_step(out) < 60 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoint_step(out)
    assert 60 <= killed_at < 300

    resumed = run_cli("train", *run_args[:1], "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_file(out / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [r["step"] for r in records(out) if "train_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # the log has no repeated steps
    config = json.loads((out / "last" / "config.json").read_text())
    straight_config = json.loads((tmp_path / "straight" / "last" / "config.json").read_text())
    assert config.get("parent") == straight_config.get("parent")
    assert config["training"] == straight_config["training"]  # the regularisers among them


def test_ctrl_c_saves_and_exits_cleanly(small_corpus, tmp_path):
    out = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "charnet", "train", str(small_corpus), *TINY, "--max-steps", "100000",
                             "--eval-every", "20", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # Wait for a step logged after the step-20 checkpoint: last/ appearing is not enough,
    # since best/ is written after it, and a signal during that write stops at step 20.
    deadline = time.monotonic() + 120
    while _logged_step(out) <= 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert _checkpoint_step(out) > 20  # saved where it stopped, not just at the last evaluation


@pytest.mark.slow
def test_default_corpus_beats_unigram_entropy_within_a_few_hundred_steps(tmp_path):
    """`charnet train` with no corpus trains on the bundled one and learns real structure."""
    result = run_cli("train", "--hidden", "128", "--embedding", "32", "--batch-size", "32", "--seq-len", "64",
                     "--lr", "1e-2", "--max-steps", "300", "--eval-every", "100", "--eval-chars", "20000",
                     cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "shakespeare-gru"
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["corpus"]["specs"] == [str(BUNDLED)]
    metrics = config["metrics"]
    assert metrics["unigram_bpc"] > 4.5
    assert metrics["val_bpc"] < metrics["unigram_bpc"] - 1.4, metrics


NATIVE_BF16 = native_bf16(torch.device("cpu"))


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bfloat16 products")
@pytest.mark.parametrize("cell", ["lstm", "peephole"])
def test_bfloat16_autocast_on_cpu_learns_and_reproduces(small_corpus, tmp_path, cell):
    """--precision bfloat16 (opt-in on CPU): the model still learns, the checkpoint stays
    float32, and the same seed gives the same losses."""
    corpus = load_corpus([small_corpus])
    model_cfg = ModelConfig(vocab_size=corpus.vocab.size, cell=cell, hidden=64, embedding=32, layers=1, dropout=0.0)
    cfg = TrainConfig(batch_size=16, seq_len=32, warmup_steps=5, lr=1e-2, max_steps=150, eval_every=50, device="cpu",
                      precision="bfloat16")
    first = Trainer(corpus, model_cfg, cfg, tmp_path / "a").fit()
    second = Trainer(corpus, model_cfg, cfg, tmp_path / "b").fit()
    unigram_nats = corpus.stats.unigram_bits("char") * math.log(2)
    assert first.final_val < unigram_nats - 0.7
    assert first.final_val == second.final_val
    weights = load_file(tmp_path / "a" / "last" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())


@pytest.mark.skipif(NATIVE_BF16, reason="this CPU has native bfloat16 products")
def test_bfloat16_without_native_support_is_a_clean_error(small_corpus, tmp_path):
    """Emulated bf16 is slower than float32 and oneDNN's LSTM refuses it: one line, not a
    traceback from the first step."""
    result = run_cli("train", small_corpus, *TINY, "--max-steps", "2", "--precision", "bfloat16",
                     "--out", tmp_path / "run")
    assert_clean_error(result, "--precision", "native bf16")


def test_best_is_chosen_on_one_set_and_only_saved_checkpoints_are_listed(small_corpus, tmp_path):
    """The final weights compete for best/ on the periodic evaluation's characters, like
    every earlier evaluation, so best/ is never worse than last/ on them; the report
    names only the checkpoints that exist."""
    from charnet.checkpoint import load_checkpoint
    from charnet.training.data import EvalStreams
    from charnet.training.evaluation import evaluate

    out = tmp_path / "run"
    result = run_cli("train", small_corpus, *TINY, "--max-steps", "50", "--eval-every", "20", "--eval-chars", "3000",
                     "--dropout", "0", "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"checkpoints: {out}/best, {out}/last;" in result.stdout
    _, val = load_corpus([small_corpus]).split(0.1)
    periodic = EvalStreams(val, 4, 32, 3000)
    loss = {name: evaluate(load_checkpoint(out / name).model, periodic, torch.device("cpu"))[0]
            for name in ("best", "last")}
    assert loss["best"] <= loss["last"], loss
    assert json.loads((out / "best" / "config.json").read_text())["metrics"]["best_val_loss"] * periodic.targets == \
        pytest.approx(loss["best"], rel=1e-5)
    assert f"over all {len(val) - 1:,} validation characters" in " ".join(result.stdout.split())

    no_val = run_cli("train", small_corpus, *TINY, "--max-steps", "3", "--val-fraction", "0", "--out", tmp_path / "b")
    assert no_val.returncode == 0, no_val.stderr
    assert f"checkpoints: {tmp_path / 'b'}/last;" in no_val.stdout and f"{tmp_path / 'b'}/best" not in no_val.stdout
