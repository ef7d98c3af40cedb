"""Shared fixtures: an isolated cache, small real corpora, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bench.common import free_port

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "corpora" / "shakespeare.txt"

# Tiny models train in well under a second a step; two threads on CI's two cores.
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "charnet-cache"
    monkeypatch.setenv("CHARNET_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    """The first 60,000 characters of the bundled corpus: real text, quick to train on."""
    with open(BUNDLED, encoding="utf-8") as f:
        return f.read(60_000)


@pytest.fixture
def small_corpus(tmp_path, shakespeare_text) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(shakespeare_text, encoding="utf-8")
    return path


UNICODE_TEXT = (
    "Hamlet: To be, or not to be.\r\n"
    "漢字かな交じり文、中文句子。\r\n"
    "Emoji: 👩‍👩‍👧 🎭 ✨, flags 🇫🇷, skin 👍🏽.\r\n"
    "Combining: e\u0301 a\u0308 n\u0303 — Å vs A\u030a.\r\n"
    "Zero-width\u200bspace, RTL: שלום עולם, Arabic: مرحبا.\r\n"
)


@pytest.fixture
def unicode_corpus(tmp_path) -> Path:
    path = tmp_path / "unicode.txt"
    path.write_bytes((UNICODE_TEXT * 40).encode("utf-8"))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, shakespeare_text) -> Path:
    """A small LSTM trained for a few seconds on real text: its samples have structure
    (words, line breaks) that tests of the sampling controls need."""
    from charnet.config import ModelConfig, TrainConfig
    from charnet.training.data import load_corpus
    from charnet.training.trainer import Trainer

    root = tmp_path_factory.mktemp("tiny-model")
    corpus_path = root / "corpus.txt"
    corpus_path.write_text(shakespeare_text, encoding="utf-8")
    corpus = load_corpus([corpus_path], cache=root / "cache")
    model_cfg = ModelConfig(vocab_size=corpus.vocab.size, cell="lstm", hidden=64, embedding=32, layers=2, dropout=0.0)
    cfg = TrainConfig(batch_size=16, seq_len=64, warmup_steps=10, lr=1e-2, max_steps=120, eval_every=60,
                      device="cpu", seed=3)
    Trainer(corpus, model_cfg, cfg, root / "run").fit()
    return root / "run" / "best"


TINY = ["--model", "lstm", "--hidden", "32", "--embedding", "16", "--layers", "2", "--batch-size", "4", "--seq-len", "32",
        "--warmup", "5"]
"""Options for a model that trains in seconds, for tests that exercise the machinery (an
lstm, whose two state tensors exercise more of it than the default gru's one)."""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli_env(env: dict | None = None) -> dict:
    """The environment of a charnet subprocess: unbuffered, wide, one thread (the models
    here are tiny, and two spinning OpenMP threads per process slow a busy 2-core
    machine down several times over), then `env`."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1", **(env or {})}


def run_cli(*args: str | Path, env: dict | None = None, timeout: float = 300, cwd: Path | None = None) -> Result:
    """Run `python -m charnet ARGS` as a real subprocess."""
    proc = subprocess.run([sys.executable, "-m", "charnet", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(env), timeout=timeout, cwd=cwd)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def cli(capsys, *args: str | Path) -> Result:
    """Run the real entry point in-process (fast) and capture what it prints."""
    from charnet.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return Result(exit_info.value.code, out, err)


def assert_clean_error(result: Result, *fragments: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def trained(small_corpus, tmp_path, capsys):
    """A run directory of a tiny model trained for 20 steps through the real CLI."""
    out = tmp_path / "run"
    result = cli(capsys, "train", small_corpus, *TINY, "--max-steps", "20", "--eval-every", "10", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, saying why, where PyTorch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def boom(monkeypatch):
    """Make every sequence whose prompt is "boom" raise on its fourth character."""
    from charnet.inference.generation import Sequence

    real = Sequence._accept

    def accept(self, *args):
        if self.request.prompt == "boom" and self.generated >= 3:
            raise RuntimeError("injected failure")
        return real(self, *args)

    monkeypatch.setattr(Sequence, "_accept", accept)


BAD_TOP_P = 0.123


@pytest.fixture
def failing_draw(monkeypatch):
    """Make the batched draw raise for any batch holding a row with top_p `BAD_TOP_P`."""
    from charnet.inference import sampling

    real = sampling.BatchParams.of.__func__

    def of(cls, params, *args):
        if any(p.top_p == BAD_TOP_P for p in params):
            raise OverflowError("injected")
        return real(cls, params, *args)

    monkeypatch.setattr(sampling.BatchParams, "of", classmethod(of))


def torchrun_command(*args: str | Path, nproc: int = 2, log_dir: Path | None = None,
                     script: Path | None = None) -> list[str]:
    """`torchrun --nproc-per-node N -m charnet ARGS` (or `SCRIPT ARGS`) on a loopback
    rendezvous, as the README documents for several machines (here: one). With `log_dir`,
    each process' stdout and stderr go to their own files (see `rank_logs`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "charnet-test"]
    if log_dir is not None:
        cmd += ["--log-dir", str(log_dir), "--redirects", "3"]
    return [*cmd, *(["-m", "charnet"] if script is None else [str(script)]), *map(str, args)]


def torchrun_env(env: dict | None = None) -> dict:
    # gloo on the loopback interface, whatever the machine's hostname resolves to; a process
    # killed by a signal (an abort in gloo's C++ threads) prints where each thread was
    loopback = {"GLOO_SOCKET_IFNAME": "lo"} if sys.platform == "linux" else {}
    return cli_env({**loopback, "PYTHONFAULTHANDLER": "1", **(env or {})})


def run_torchrun(*args: str | Path, nproc: int = 2, log_dir: Path | None = None, env: dict | None = None,
                 timeout: float = 300, script: Path | None = None) -> Result:
    """With `log_dir`, a failed run's stderr ends with each process' own stderr: torchrun's
    summary names the signal or exit code but not the process' last words."""
    proc = subprocess.run(torchrun_command(*args, nproc=nproc, log_dir=log_dir, script=script), capture_output=True,
                          text=True, env=torchrun_env(env), timeout=timeout)
    stderr = proc.stderr
    if proc.returncode != 0 and log_dir is not None:
        for rank, (_, err) in sorted(rank_logs(log_dir).items()):
            stderr += f"\n--- stderr of local rank {rank} ---\n{err}"
    return Result(proc.returncode, proc.stdout, stderr)


def rank_logs(log_dir: Path) -> dict[int, tuple[str, str]]:
    """Local rank -> (stdout, stderr) of the processes torchrun started with `log_dir`."""
    found = {}
    for rank_dir in log_dir.glob("*/attempt_0/*"):
        found[int(rank_dir.name)] = ((rank_dir / "stdout.log").read_text(), (rank_dir / "stderr.log").read_text())
    return found


# The serving fixtures (tiny checkpoints, in-process apps, real servers), for tests/server/
# and tests/test_cli_serve.py alike; session-scoped ones are built once.
from tests.serving import anyio_backend, checkpoint, make_app, models_dir, server, solo, start_server  # noqa: E402,F401


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a fresh profile (tests marked `tests.browser.needs_browser`)."""
    from playwright.sync_api import expect

    from bench.browser import chromium

    expect.set_options(timeout=30_000)  # a shared two-core machine can be slow
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context
