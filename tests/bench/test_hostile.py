"""The isolation benchmark runs end to end (a smoke run; no timing is asserted)."""

from __future__ import annotations

from bench.hostile import attacks
from tests.bench.quick import run_quick


def test_hostile_quick(tmp_path):
    _, result = run_quick("hostile", tmp_path)
    for phase in ("quiet", "hostile"):
        assert result[phase]["chars"] > 0 and result[phase]["errors"] == 0, result[phase]
    assert result["aggregate_ratio"] > 0 and result["rss_mb_before"] > 0
    seen = result["hostile"]["attacks"]
    assert seen, "the hostile client sent nothing"
    first = [name for name, _ in attacks("m")][: len(seen)]
    assert list(seen) == first  # it works through the list in order
    assert seen["top_k 2^64 on /v1/generate"] == {"400": seen["top_k 2^64 on /v1/generate"]["400"]}
