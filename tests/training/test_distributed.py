"""Several processes under torchrun: gloo on CPU over loopback, two processes of one thread.

One two-process run and one single-process run with the same global batch are shared by
the tests below; together the file takes well under a minute on two cores.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY, assert_clean_error, rank_logs, run_cli, run_torchrun, torchrun_command, torchrun_env

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch has no torch.distributed")

STEPS = 40


def tiny(batch_size: int) -> list[str]:
    """TINY with another --batch-size, no dropout (its masks differ per process), and a
    periodic validation of one stream, fewer than there are processes."""
    args = list(TINY)
    args[args.index("--batch-size") + 1] = str(batch_size)
    return [*args, "--dropout", "0", "--eval-every", "20", "--eval-chars", "40", "--seed", "3"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[tuple[str, int], float]:
    out = {}
    for r in records(run_dir):
        for kind in ("train_loss", "val_loss"):
            if kind in r:
                out[(kind, r["step"])] = r[kind]
    return out


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def step_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / "config.json").read_text())["metrics"]["step"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare_text):
    """A 2 x 4 run under torchrun and a 1 x 8 run, both of 40 steps."""
    base = tmp_path_factory.mktemp("dist")
    corpus = base / "small.txt"
    corpus.write_text(shakespeare_text, encoding="utf-8")
    env = {"CHARNET_CACHE_DIR": str(base / "cache")}  # run_cli and run_torchrun give each process one thread
    ddp = run_torchrun("train", corpus, *tiny(4), "--max-steps", STEPS, "--out", base / "ddp",
                       log_dir=base / "logs", env=env)
    single = run_cli("train", corpus, *tiny(8), "--max-steps", STEPS, "--out", base / "single", env=env)
    assert single.returncode == 0, single.stderr
    return {"base": base, "corpus": corpus, "env": env, "ddp": ddp, "single": single}


def test_two_processes_train_and_only_rank_0_writes(runs):
    ddp, out = runs["ddp"], runs["base"] / "ddp"
    assert ddp.returncode == 0, ddp.stderr
    logs = rank_logs(runs["base"] / "logs")
    assert sorted(logs) == [0, 1]
    stdout0, stderr0 = logs[0]
    assert stdout0.count("training lstm") == 1 and f"done: {STEPS} steps" in stdout0, stdout0
    assert logs[1] == ("", ""), logs[1]  # rank 1 prints nothing, not even a warning
    assert stderr0 == "", stderr0

    # One best/ and one last/, nothing half-written or left over from a swap.
    expected = {"best", "last", "metrics.jsonl", "loss.png"}
    assert {p.name for p in out.iterdir()} - {"tensorboard"} == expected
    assert {p.name for p in (out / "last").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                                          "resume.safetensors"}
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["training"]["batch_size"] == 4
    assert config["metrics"]["step"] == STEPS

    # Each step logged once; the loss falls.
    rs = records(out)
    keys = [(r["step"], "train_loss" in r, "samples" in r) for r in rs]
    assert len(keys) == len(set(keys))
    train = [r["train_loss"] for r in rs if "train_loss" in r]
    assert [r["step"] for r in rs if "train_loss" in r] == [10, 20, 30, 40]
    assert train[-1] < train[0] - 0.3, train
    # The periodic validation had one stream for two processes: rank 1 scored nothing,
    # and the characters counted are the one stream's: all 40 of --eval-chars.
    assert [r["val_chars"] for r in rs if "val_loss" in r] == [40, 40]


def test_two_processes_equal_one_process_with_the_same_global_batch(runs):
    """DDP averages the gradients of 2 x 4 streams: the gradient of the mean over the
    same 8 streams a single process reads. Only the order of float additions differs
    (measured: weights within 2e-7), so 1e-5 is a tolerance no real mismatch fits in:
    a wrong stream, learning rate or loss scale moves the weights by 1e-3 or more."""
    assert runs["ddp"].returncode == 0, runs["ddp"].stderr
    ddp, single = runs["base"] / "ddp", runs["base"] / "single"
    assert max_weight_difference(ddp / "last", single / "last") < 1e-5
    a, b = losses(ddp), losses(single)
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_line_documents_two_processes_equal_one(runs, tmp_path):
    """Line documents under DDP: each process trains its half of every batch's rows, and
    each target weighs the same whichever process' padding it sits beside."""
    env, corpus = runs["env"], runs["corpus"]
    args = [*tiny(4), "--documents", "lines", "--max-steps", "20", "--eval-every", "10"]
    ddp = run_torchrun("train", corpus, *args, "--out", tmp_path / "ddp", log_dir=tmp_path / "logs", env=env)
    assert ddp.returncode == 0, ddp.stderr
    single = run_cli("train", corpus, *args[:-4], "--batch-size", "8", *args[-4:], "--out", tmp_path / "single", env=env)
    assert single.returncode == 0, single.stderr
    assert max_weight_difference(tmp_path / "ddp" / "last", tmp_path / "single" / "last") < 1e-5
    a, b = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5), key


@pytest.mark.parametrize("batch", [8, 4], ids=["same-global-batch", "same-per-process-batch"])
def test_resume_with_one_process(runs, batch, tmp_path):
    """A two-process run resumed by one process. With --batch-size 8 the streams are the
    same ones and training continues exactly as a single-process run resumed alike; with
    the run's per-process 4 the global batch halves, the streams are recut, and training
    goes on from the saved weights and optimizer state."""
    assert runs["ddp"].returncode == 0, runs["ddp"].stderr
    out = tmp_path / "resumed"
    shutil.copytree(runs["base"] / "ddp", out)
    extra = ["--batch-size", "8"] if batch == 8 else []
    resumed = run_cli("train", "--resume", "--out", out, "--max-steps", 60, *extra, env=runs["env"])
    assert resumed.returncode == 0, resumed.stderr
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["metrics"]["step"] == 60
    assert config["training"]["world_size"] == 1 and config["training"]["batch_size"] == batch

    rs = records(out)
    assert [r["step"] for r in rs if "train_loss" in r] == [10, 20, 30, 40, 50, 60]
    train = losses(out)
    assert train[("train_loss", 60)] < train[("train_loss", 40)]
    assert max_weight_difference(out / "last", runs["base"] / "ddp" / "last") > 1e-3  # it trained

    if batch == 8:
        reference = tmp_path / "single"
        shutil.copytree(runs["base"] / "single", reference)
        again = run_cli("train", "--resume", "--out", reference, "--max-steps", 60, env=runs["env"])
        assert again.returncode == 0, again.stderr
        assert max_weight_difference(out / "last", reference / "last") < 1e-5


def test_resume_refuses_a_batch_size_that_changes_the_global_batch(runs):
    result = run_cli("train", "--resume", "--out", runs["base"] / "ddp", "--batch-size", "6", env=runs["env"])
    assert_clean_error(result, "--batch-size 6 x 1 process changes the run's global batch of 8 (4 x 2 processes)",
                       "--batch-size 8 keeps it")


def test_error_on_the_main_process_ends_every_process(runs):
    """--out holds a run: the main process refuses it in one line; the other exits too,
    silently, instead of waiting for it in a collective."""
    log_dir = runs["base"] / "logs-error"
    result = run_torchrun("train", runs["corpus"], *tiny(4), "--max-steps", 5, "--out", runs["base"] / "ddp",
                          log_dir=log_dir, env=runs["env"], timeout=120)
    assert result.returncode != 0
    assert re.findall(r"exitcode\s+:\s*(-?\d+)", result.stderr) == ["2", "2"], result.stderr
    logs = rank_logs(log_dir)
    assert logs[0][1].strip().splitlines() == [
        f"charnet: error: --out {runs['base'] / 'ddp'}: holds another run; pass --resume to continue it or "
        "--force to replace it"]
    assert logs[1] == ("", "")


LEAVE_GROUP = """
import json, os, torch
from torch.nn.parallel import DistributedDataParallel
from charnet.training.distributed import from_env, shutdown

def threads():
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))

dist = from_env()
net = DistributedDataParallel(torch.nn.Linear(2, 2))
net(torch.ones(1, 2)).sum().backward()
during = threads()
del net
shutdown()
print(json.dumps({"during": during, "after": threads()}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads the processes' threads from /proc")
def test_shutdown_ends_the_group_threads(tmp_path):
    """After `shutdown` no thread of the group is left for interpreter exit to tear down
    (where doing so aborted a finished run now and then: SIGABRT, "terminate called
    without an active exception"). DDP's constructor imports torch.distributed.nn, whose
    functions took the live group as a default argument and so kept it alive for good."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_GROUP, encoding="utf-8")
    result = run_torchrun(script=script, log_dir=tmp_path / "logs", timeout=120)
    assert result.returncode == 0, result.stderr
    logs = rank_logs(tmp_path / "logs")
    assert sorted(logs) == [0, 1]
    for rank, (stdout, _) in logs.items():
        seen = json.loads(stdout)
        assert any("gloo" in name for name in seen["during"]), seen  # the check sees the group's threads
        assert not any("gloo" in name for name in seen["after"]), (rank, seen)


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def _rank_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK=")).split(b"=")[1])


@pytest.mark.skipif(sys.platform != "linux", reason="finds torchrun's workers through /proc")
def test_ctrl_c_in_one_process_stops_both_and_saves(runs, tmp_path):
    out = tmp_path / "interrupted"
    log_dir = tmp_path / "logs"
    cmd = torchrun_command("train", runs["corpus"], *tiny(4), "--max-steps", 100_000, "--out", out, log_dir=log_dir)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=torchrun_env(runs["env"]))
    try:
        deadline = time.monotonic() + 120
        while not (out / "last" / "config.json").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        workers = {_rank_of(pid): pid for pid in _children(proc.pid)}
        assert sorted(workers) == [0, 1]
        subprocess.run(["kill", "-INT", str(workers[1])], check=True)  # rank 1 only
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Both stopped at the same step and exited 130 (which torchrun reports as a failure).
    assert re.findall(r"exitcode\s+:\s*(-?\d+)", stderr) == ["130", "130"], stderr
    logs = rank_logs(log_dir)
    assert "(SIGINT)" in logs[0][0] and logs[0][1] == "" and logs[1] == ("", ""), logs
    step = step_of(out / "last")
    assert step >= 20 and f"done: {step} steps" in logs[0][0]  # saved where both stopped
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
