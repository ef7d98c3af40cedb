"""A run directory: one run's checkpoints and logs, never mixed with another run's."""

from __future__ import annotations

import shutil
from pathlib import Path

from charnet.checkpoint import recover
from charnet.errors import CharnetError

RUN_FILES = ("best", "last", "metrics.jsonl", "loss.png", "tensorboard")


def prepare_out_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to mix two runs in one directory; with `force`, clear the old run's files
    (and only those)."""
    if out.exists() and not out.is_dir():
        raise CharnetError(f"--out {out}: exists and is not a directory")
    for name in ("last", "best"):
        recover(out / name)
    held = [name for name in RUN_FILES if (out / name).exists()]
    if resume:
        if not (out / "last").is_dir():
            raise CharnetError(f"--resume: {out} holds no run to resume (no last/ checkpoint)")
        return
    if held and not force:
        raise CharnetError(f"--out {out}: holds another run; pass --resume to continue it or --force to replace it")
    for name in held:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
