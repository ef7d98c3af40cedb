"""A benchmark module's smoke run, as `python -m bench.NAME ... --quick --json FILE` from
the repository root: what it printed, and the figures it recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def run_quick(name: str, tmp_path: Path, *args: str | Path, timeout: float = 300) -> tuple[str, dict]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *map(str, args), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())
