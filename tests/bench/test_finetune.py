"""bench.finetune: a quick run of its three real training runs writes every figure the report reads."""

from __future__ import annotations

from tests.bench.quick import run_quick


def test_quick_finetune_bench(tmp_path):
    _, data = run_quick("finetune", tmp_path, timeout=600)
    runs = data["runs"]
    assert list(runs) == ["finetune", "scratch", "scratch_long"]
    assert runs["finetune"]["parent"]["checkpoint"] == "shakespeare" and runs["scratch"]["parent"] is None
    assert runs["finetune"]["lr"] == 5e-4 and runs["scratch"]["lr"] == 2e-3
    for r in runs.values():
        assert r["best_val_loss"] > 0 and r["curve"] and r["steps"] > 0
    assert data["finetune_over_scratch_long"] == runs["finetune"]["best_val_loss"] / runs["scratch_long"]["best_val_loss"]
    # Even seconds of fine-tuning start from a model that knows English.
    assert runs["finetune"]["best_val_loss"] < runs["scratch_long"]["best_val_loss"]
