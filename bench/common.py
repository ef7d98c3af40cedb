"""Helpers every benchmark shares: the machine's description, the shared corpora, JSON.

A benchmark figure means little without the machine it came from, and on a shared
machine the load average at the start says whether the figure can be trusted, so
`machine()` records both.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINYSHAKESPEARE = Path("corpora") / "tinyshakespeare.txt"
"""Where the standard benchmark corpus lies inside the shared folder."""


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SPEED_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "sve")
"""CPU features that change how fast charnet's kernels run (bf16 products need
avx512_bf16 or amx_bf16 on x86)."""


def cpu_features() -> list[str]:
    """Which of `SPEED_FEATURES` this CPU has (from /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in SPEED_FEATURES if f in flags]
    except OSError:
        pass
    return []


def ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def git_commit() -> str | None:
    """HEAD of the checkout the benchmarks run from, with ``-dirty`` when it has
    uncommitted changes (so a figure can be traced to the code that produced it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    """CPU (and its speed-relevant features), cores, RAM, GPU, torch, threads, date, git
    commit and load average."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
               "memory_bytes": torch.cuda.get_device_properties(0).total_memory}
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu": cpu_model(), "cpu_features": cpu_features(), "cores": os.cpu_count(), "ram_bytes": ram_bytes(),
            "gpu": gpu,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(), "load_average": load}


def machine_slug(info: dict) -> str:
    """A short file-name-safe name for the machine: CPU model, cores, and the GPU."""
    name = f"{info.get('cpu') or 'cpu'}-{info.get('cores')}c"
    if info.get("gpu"):
        name += f"-{info['gpu']['name']}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def shared_dir() -> Path | None:
    """The project's shared folder (``../shared`` beside the repository root).

    In a git worktree the root is not the main checkout, so the folder beside the main
    checkout is tried too; ``$CHARNET_SHARED`` overrides both.
    """
    if env := os.environ.get("CHARNET_SHARED"):
        return Path(env)
    candidates = [ROOT.parent / "shared"]
    try:
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10)
        if common.returncode == 0 and common.stdout.strip():
            candidates.append(Path(common.stdout.strip()).parent.parent / "shared")
    except (OSError, subprocess.SubprocessError):
        pass
    return next((c for c in candidates if c.is_dir()), None)


def tinyshakespeare() -> Path | None:
    shared = shared_dir()
    path = shared / TINYSHAKESPEARE if shared else None
    return path if path and path.is_file() else None


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def untrained_lstm():
    """(model, vocab): a 2x512 LSTM over the bundled corpus's characters, untrained. It
    is as fast as a trained one and made in a second, for speed benchmarks without a
    trained checkpoint."""
    import torch

    from charnet.config import ModelConfig
    from charnet.model import CharRNN
    from charnet.tokenizer import Vocab

    torch.manual_seed(0)
    vocab = Vocab.from_chars((ROOT / "corpora" / "shakespeare.txt").read_text(encoding="utf-8"))
    return CharRNN(ModelConfig(vocab_size=vocab.size, cell="lstm")).eval(), vocab  # the bundled model's shape


def mb(n_bytes: float) -> float:
    """Megabytes, decimal (10^6 bytes), as throughput figures conventionally use."""
    return n_bytes / 1e6


def free_port() -> int:
    """A loopback port no one listens on now (for a server the benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
