"""The serving benchmark runs end to end (a smoke run; no timing is asserted)."""

from __future__ import annotations

from tests.bench.quick import run_quick


def test_serve_load_quick(checkpoint, tmp_path):
    printed, result = run_quick("serve_load", tmp_path, checkpoint)
    assert [r["clients"] for r in result["levels"]] == [1, 2, 4]
    assert all(r["errors"] == 0 and r["chars"] == 24 * r["clients"] for r in result["levels"])
    assert result["rss_mb_before"] > 0 and "chars/s" in printed
