"""bench/sample_throughput.py runs from the repository root and records its figures (a smoke
run: the counts are tiny, so the figures are not checked, only that they are there)."""

from __future__ import annotations

from tests.bench.quick import run_quick


def test_quick_run_prints_and_records(tiny_model, tmp_path):
    printed, result = run_quick("sample_throughput", tmp_path, "--checkpoint", tiny_model)
    for line in ("naive eager loop", "charnet single stream", "bandwidth bound", "aggregate chars/s"):
        assert line in printed, printed
    assert set(result["batched_chars_per_s"]) == {"1", "8"}
    assert result["naive_chars_per_s"] > 0 and result["single_chars_per_s"] > 0 and result["bytes_per_step"] > 0
    assert result["machine"]["torch"] and result["shape"]["cell"] == "lstm"
    # The tiny model's vocabulary has no braces: the JSON-Schema run is skipped, saying why.
    assert result["constrained"] == {} and "JSON Schema constraint: not measured" in printed
    # The export, in onnxruntime (the dev extra) and in Chromium where one runs.
    exported = result["exported"]
    assert exported["onnxruntime_chars_per_s"] > 0 and "onnxruntime (Python, CPU)" in printed
    assert exported.get("browser_chars_per_s", 0) > 0 or exported["browser_skipped"]


def test_the_constrained_run_measures_both_sides_with_a_model_that_writes_json():
    import charnet
    from bench.sample_throughput import RECORDS, constrained

    engine = charnet.load("shakespeare")
    held = constrained(engine, chars=12, rounds=1, streams=(1, 2))
    assert set(held) == {"1", "2"}
    assert all(r["free_chars_per_s"] > 0 and r["json_chars_per_s"] > 0 for r in held.values())
    assert held["2"]["ratio"] == held["2"]["json_chars_per_s"] / held["2"]["free_chars_per_s"]
    # RECORDS outlasts any measurement: a stream of it never ends before its length.
    out = engine.generate("", max_chars=300, seed=0, constraint={"json": RECORDS})
    assert out.finish_reason == "length" and out.text.startswith('[{"name": "')
