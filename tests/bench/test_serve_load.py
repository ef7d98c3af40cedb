"""The serving benchmark runs end to end (a smoke run; no timing is asserted)."""

from __future__ import annotations

from tests.bench.quick import run_quick


def test_serve_load_quick(checkpoint, tmp_path):
    printed, result = run_quick("serve_load", tmp_path, checkpoint)
    levels = result["levels"]
    assert [r["clients"] for r in levels] == [1, 2, 4]
    assert all(r["errors"] == 0 and r["chars"] == 24 * r["clients"] for r in levels)
    assert all(r["engine_chars_per_s"] > 0 and r["server_over_engine"] > 0 and r["loop_over_engine"] > 0
               for r in levels)
    # CPU time comes in clock ticks, and 24 characters may take less than one
    assert all(r["engine_cpu_s_per_kchar"] >= 0 and r["api_cpu_s_per_kchar"] >= 0 for r in levels)
    assert sum(r["server_cpu_s_per_kchar"] for r in levels) > 0 and all(r["client_cpu_s_per_kchar"] >= 0 for r in levels)
    assert all(r["ttfc_p99_ms"] >= r["headers_p50_ms"] > 0 for r in levels)
    soak = result["soak"]
    assert soak["errors"] == 0 and soak["requests"] >= 4 and soak["rss_mb_start"] > 0 and soak["rss_mb_end"] > 0
    assert result["rss_mb_before"] > 0
    assert "server CPU" in printed and "soak: 4 clients" in printed
