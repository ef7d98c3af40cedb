"""The serving benchmark runs end to end (a smoke run; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_serve_load_quick(checkpoint, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench.serve_load", str(checkpoint), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert [r["clients"] for r in result["levels"]] == [1, 2, 4]
    assert all(r["errors"] == 0 and r["chars"] == 24 * r["clients"] for r in result["levels"])
    assert result["rss_mb_before"] > 0 and "chars/s" in proc.stdout
