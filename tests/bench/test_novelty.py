"""bench.novelty: a quick run writes the figures the report reads, and they make sense."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.common import tinyshakespeare
from tests.conftest import ROOT


@pytest.mark.skipif(tinyshakespeare() is None, reason="no ../shared/corpora/tinyshakespeare.txt")
def test_quick_novelty_bench(tmp_path):
    out = tmp_path / "nov.json"
    proc = subprocess.run([sys.executable, "-m", "bench.novelty", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    text, lines = data["text"], data["lines"]
    assert data["corpus_bytes"] >= 5e6 and text["build_s"] > 0 and text["per_sample_s"] > 0
    assert min(text["copied_longest"]) >= 900 and max(text["scrambled_longest"]) < 20  # copied vs shuffled text
    assert lines["fractions"]["new"] == pytest.approx(0.5)  # half the items were made up
