"""bench/sample_throughput.py runs from the repository root and records its figures (a smoke
run: the counts are tiny, so the figures are not checked, only that they are there)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_quick_run_prints_and_records(tiny_model, tmp_path):
    out = tmp_path / "sample.json"
    proc = subprocess.run([sys.executable, "-m", "bench.sample_throughput", "--checkpoint", str(tiny_model),
                           "--quick", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("naive eager loop", "charnet single stream", "bandwidth bound", "aggregate chars/s"):
        assert line in proc.stdout, proc.stdout
    result = json.loads(out.read_text())
    assert set(result["batched_chars_per_s"]) == {"1", "8"}
    assert result["naive_chars_per_s"] > 0 and result["single_chars_per_s"] > 0 and result["bytes_per_step"] > 0
    assert result["machine"]["torch"] and result["shape"]["cell"] == "lstm"
