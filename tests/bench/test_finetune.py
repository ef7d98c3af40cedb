"""bench.finetune: a quick run of its three real training runs writes every figure the report reads."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_quick_finetune_bench(tmp_path):
    out = tmp_path / "ft.json"
    proc = subprocess.run([sys.executable, "-m", "bench.finetune", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert list(runs) == ["finetune", "scratch", "scratch_long"]
    assert runs["finetune"]["parent"]["checkpoint"] == "shakespeare" and runs["scratch"]["parent"] is None
    assert runs["finetune"]["lr"] == 5e-4 and runs["scratch"]["lr"] == 2e-3
    for r in runs.values():
        assert r["best_val_loss"] > 0 and r["curve"] and r["steps"] > 0
    assert data["finetune_over_scratch_long"] == runs["finetune"]["best_val_loss"] / runs["scratch_long"]["best_val_loss"]
    # Even seconds of fine-tuning start from a model that knows English.
    assert runs["finetune"]["best_val_loss"] < runs["scratch_long"]["best_val_loss"]
