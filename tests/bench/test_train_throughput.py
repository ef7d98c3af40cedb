"""bench/train_throughput.py runs from the repository root and reports its ratios.

A smoke test: --quick times a tiny shape for a fraction of a second per loop, so the
figures mean nothing and are not checked; that the script runs, measures every cell
through both loops, and reports and records the ratios is.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from charnet.config import CELLS
from tests.conftest import ROOT


def test_quick_run_prints_and_records_the_ratios(tmp_path):
    report_path = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench.train_throughput", "--quick", "--json", str(report_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for cell in CELLS:
        assert re.search(rf"^\s+{cell}\s+trainer\s+[\d,]+ chars/s\s+bare nn\.\w+\s+[\d,]+ chars/s\s+"
                         rf"trainer/bare \d+\.\d\d   \(rounds \d+\.\d\d-\d+\.\d\d\)$", out, re.M), out
    assert re.search(r"^\s+lstm trainer/bare\s+\d+\.\d\d\s+target >= 0\.90: (met|MISSED)$", out, re.M), out
    assert re.search(r"^\s+peephole/lstm\s+\d+\.\d\d\s+target >= 0\.50: (met|MISSED)$", out, re.M), out

    report = json.loads(report_path.read_text())
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["cores"] >= 1 and report["machine"]["threads"] == 1 and report["machine"]["date"]
    assert [r["cell"] for r in report["results"]] == list(CELLS)
    assert set(report["ratios"]) == {f"{c} trainer/bare" for c in CELLS} | {"peephole/lstm"}
    assert all(value > 0 for value in report["ratios"].values())
    assert set(report["targets_met"]) == {"lstm trainer/bare", "peephole/lstm"}


def test_bad_options_are_usage_errors():
    from bench.train_throughput import parse

    with pytest.raises(SystemExit) as exit_info:
        parse(["--seconds", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        parse(["--cells", "lstm,transformer"])


def test_bench_is_not_installed_with_charnet(tmp_path):
    """Only charnet* is packaged: outside the checkout, `bench` is not importable."""
    proc = subprocess.run([sys.executable, "-c", "import charnet, bench"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "No module named 'bench'" in proc.stderr, proc.stderr
