"""The benchmark suite: a quick end-to-end run of `python -m bench all`, and the report's
reading of results (figures found, targets judged, "not measured" where nothing was).

No timing assertions: the figures depend on the machine; only their presence and the
report's handling of them are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import figures, quality, runner
from bench.flops import GATES, flops_per_char
from bench.report import write_report
from tests.conftest import ROOT

TARGET_NAMES = [
    "Trainer vs the bare PyTorch loop (lstm)", "Peephole vs lstm training speed",
    "Single-stream sampling vs the naive loop", "Single-stream sampling vs the bandwidth bound",
    "64 streams sampled together vs one stream", "JSON-Schema constraint at 64 streams vs unconstrained",
    "Server aggregate at 64 clients vs 1 client", "Server vs its engine alone, 1 client",
    "Server vs its engine alone, 64 clients", "p99 time to first character at 64 clients",
    "Server errors over the sweep and the soak", "Server memory growth over a 5-minute 64-client soak",
    "Beside a hostile client: well-behaved aggregate vs quiet", "Beside a hostile client: well-behaved p99 TTFC vs quiet",
    "Beside a hostile client: errors of the well-behaved clients", "Beside a hostile client: server RSS growth",
    "Sonnets: 2 min fine-tuned from shakespeare vs 10 min from scratch",
    "tinyshakespeare val loss, 15 min on a 2-core CPU", "tinyshakespeare val loss, 10 min on one H100",
    "Automatic defaults vs the best run, 15 min CPU", "Every cell's new recipe vs today's settings, 15 min CPU",
    "Cached corpus encoding",
]


def test_quick_suite_end_to_end(tmp_path):
    """`python -m bench all --quick` writes a results JSON with every part's figures and
    a report; `python -m bench report` regenerates the same report from the JSON."""
    out, report = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--quick", "--budget", "20s",
                           "--only", "encode,flops,quality,sample", "--out", str(out), "--report", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = out.glob("*.json")
    results = json.loads(path.read_text(encoding="utf-8"))
    assert results["quick"] is True
    for key in ("cpu", "cores", "ram_bytes", "torch", "threads", "date", "git_commit", "load_average"):
        assert key in results["machine"], key
    assert list(results["parts"]) == ["flops", "encode", "sample", "quality"]
    parts = {name: r["data"] for name, r in results["parts"].items() if r["status"] == "ok"}
    assert set(parts) == {"flops", "encode", "sample", "quality"}, {n: r["status"] for n, r in results["parts"].items()}

    enc = parts["encode"]
    assert enc["cached_mb_per_s"] > 0 and enc["cold_mb_per_s"] > 0 and len(enc["sizes"]) == 2
    for size in enc["sizes"].values():
        assert size["cold"]["peak_rss_bytes"] > 0 and size["cached"]["cache_hit"] and not size["cold"]["cache_hit"]
    assert enc["reference"]["tokenizers_mb_per_s"] > 0 and enc["reference"]["non_ascii_fraction"] > 0.01
    assert parts["flops"]["peak_gflops"] > 0 and parts["flops"]["mv"]["beyond_cache"]["gb_per_s"] > 0
    assert parts["sample"]["single_vs_naive"] > 0
    q = parts["quality"]
    if not q.get("skipped"):  # the shared corpus is beside the repository root
        run = q["cpu"]["lstm"]
        assert run["returncode"] == 0 and run["final_val_loss"] > 0 and run["budget_s"] == 20
        assert q["corpus"]["is_tinyshakespeare"] and ("cuda_skipped" in q or q["cuda"])

    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks") and "Quick smoke run" in text
    for name in TARGET_NAMES:
        assert f"| {name} |" in text, name
    assert "## Model quality" in text and "## Sampling speed" in text and "## Corpus encoding" in text
    assert any(out.glob("*-sample.png"))

    again = tmp_path / "again.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "report", str(path), "--report", str(again)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert again.read_text(encoding="utf-8").split("\n", 3)[3] == text.split("\n", 3)[3]  # past the source line

    # --keep: re-measure one part, carry the others over, marked with where they came from
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--quick", "--only", "flops", "--keep", str(path),
                           "--out", str(tmp_path / "second"), "--report", str(tmp_path / "second.md")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [second] = (tmp_path / "second").glob("*.json")
    merged = json.loads(second.read_text(encoding="utf-8"))["parts"]
    assert list(merged) == ["flops", "encode", "sample", "quality"]
    assert "kept_from" not in merged["flops"] and merged["encode"]["kept_from"]["file"] == path.name
    assert merged["encode"]["data"] == parts["encode"]
    assert "Carried over from an earlier run" in (tmp_path / "second.md").read_text(encoding="utf-8")
    # Kept again from the second file, a part still names the run that measured it.
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--quick", "--only", "flops", "--keep", str(second),
                           "--out", str(tmp_path / "third"), "--report", str(tmp_path / "third.md")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [third] = (tmp_path / "third").glob("*.json")
    assert json.loads(third.read_text(encoding="utf-8"))["parts"]["encode"]["kept_from"]["file"] == path.name


def test_unknown_benchmark_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--only", "nope", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown benchmark nope" in proc.stderr


def test_missing_module_is_not_available(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(runner.PARTS, "later", "bench.does_not_exist_yet")
    record = runner.run_part("later", None, tmp_path)
    assert record == {"status": "not available", "module": "bench.does_not_exist_yet"}
    assert "later: not available" in capsys.readouterr().out


def test_hung_benchmark_is_stopped_with_its_children(tmp_path, monkeypatch):
    """A benchmark past --timeout is killed along with what it started, and recorded as failed."""
    (tmp_path / "bench_hangs.py").write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setitem(runner.PARTS, "hangs", "bench_hangs")
    args = type("Args", (), {"quick": True, "timeout": 3.0})()
    record = runner.run_part("hangs", args, tmp_path)
    assert record["status"] == "failed" and "timeout" in record["error"]
    grandchild = int(record["log_tail"].split()[0])
    for _ in range(100):  # the kill is asynchronous; wait for the process to go
        try:
            os.kill(grandchild, 0)
            if Path(f"/proc/{grandchild}/stat").read_text().split(")")[-1].split()[0] == "Z":
                break  # killed, waiting for init to reap it
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the benchmark's child process outlived the timeout")


# -- reading results --------------------------------------------------------------------


def results_with(**parts) -> dict:
    return {"machine": {"cpu": "test cpu", "cores": 2, "gpu": None}, "quick": False,
            "parts": {name: {"status": "ok", "module": f"bench.{name}", "data": data} for name, data in parts.items()}}


# bench.train_throughput's layout (rows trimmed to what the report reads).
TRAIN_THROUGHPUT = {
    "shape": {"hidden": 512, "layers": 2, "embedding": 128, "batch_size": 64, "seq_len": 128, "dropout": 0.0},
    "results": [{"cell": "lstm", "trainer_chars_per_s": 900.0, "bare_chars_per_s": 1000.0, "trainer_over_bare": 0.9},
                {"cell": "peephole", "trainer_chars_per_s": 600.0, "bare_chars_per_s": 1000.0,
                 "trainer_over_bare": 0.6}],
    "ratios": {"lstm trainer/bare": 0.9, "peephole trainer/bare": 0.6, "peephole/lstm": 0.6667}}


def test_train_figures():
    figs = figures.train_figures(TRAIN_THROUGHPUT, {"peak_gflops": 100.0})
    lstm = figs["cells"]["lstm"]
    assert (lstm["trainer"], lstm["bare"]) == (900.0, 1000.0) and lstm["ratio"] == pytest.approx(0.9)
    assert lstm["pct_of_peak"] == pytest.approx(100 * 900 * flops_per_char("lstm", 2, 512, 128, 66)["training"] / 1e11)
    judged = {t.name: t for t in figures.targets(results_with(train=TRAIN_THROUGHPUT, flops={"peak_gflops": 100.0}))}
    assert judged["Trainer vs the bare PyTorch loop (lstm)"].status == "met"
    assert judged["Peephole vs lstm training speed"].measured == "0.67x"


# bench.serve_load's own layout: counts, per-client rates and ratios beside the figures.
SERVE_LOAD = {"model": "lstm-2x512", "chars_per_client": 400, "cpus": 2, "levels": [
    {"clients": 1, "chars": 400, "wall_s": 4.0, "chars_per_s": 100.0, "per_client_chars_per_s": 100.0,
     "ttfc_p50_ms": 4.0, "ttfc_p99_ms": 5.0, "errors": 0, "error_examples": [], "ratio_vs_1": 1.0},
    {"clients": 64, "chars": 25600, "wall_s": 10.24, "chars_per_s": 2500.0, "per_client_chars_per_s": 39.1,
     "ttfc_p50_ms": 90.0, "ttfc_p99_ms": 150.0, "headers_p99_ms": 120.0, "errors": 0, "error_examples": [], "ratio_vs_1": 25.0}],
    "rss_mb_before": 300.0, "rss_mb_after": 320.0, "targets": {"aggregate_64_vs_1_ge_20x": True}}


def test_serve_figures():
    rows = figures.serve_figures(SERVE_LOAD)
    assert [(r["clients"], r["chars_per_s"]) for r in rows] == [(1, 100.0), (64, 2500.0)]
    assert rows[1]["ttfc_p99_ms"] == pytest.approx(150.0) and rows[1]["headers_p99_ms"] == pytest.approx(120.0)
    assert rows[0]["headers_p99_ms"] is None  # results from before the column existed still render
    judged = {t.name: t for t in figures.targets(results_with(serve=SERVE_LOAD))}
    assert judged["Server aggregate at 64 clients vs 1 client"].status == "met"
    assert judged["p99 time to first character at 64 clients"].status == "not met"
    assert judged["Server vs its engine alone, 1 client"].note.startswith("not measured")  # an older file: no engine
    assert judged["Server errors over the sweep and the soak"].status == "not measured"


# The serving-throughput issue's layout: each level against the engine alone, and a soak.
SERVE_VS_ENGINE = {"model": "shakespeare", "chars_per_client": 400, "rounds": 3, "levels": [
    {"clients": 1, "chars": 1200, "chars_per_s": 2800.0, "engine_chars_per_s": 3000.0, "server_over_engine": 0.933,
     "ttfc_p50_ms": 3.1, "ttfc_p99_ms": 3.5, "headers_p50_ms": 1.2, "headers_p99_ms": 1.4,
     "server_cpu_s_per_kchar": 0.6, "api_cpu_s_per_kchar": 0.05, "engine_cpu_s_per_kchar": 0.55,
     "client_cpu_s_per_kchar": 0.01, "errors": 0, "error_examples": []},
    {"clients": 64, "chars": 76800, "chars_per_s": 30000.0, "engine_chars_per_s": 42000.0, "server_over_engine": 0.714,
     "loop_over_engine": 0.96, "ttfc_p50_ms": 30.0, "ttfc_p99_ms": 48.0, "headers_p50_ms": 10.0, "headers_p99_ms": 20.0,
     "server_cpu_s_per_kchar": 0.06, "api_cpu_s_per_kchar": 0.01, "engine_cpu_s_per_kchar": 0.05,
     "client_cpu_s_per_kchar": 0.002, "errors": 0, "error_examples": []}],
    "soak": {"clients": 64, "duration_s": 300, "chars": 9_000_000, "requests": 22500, "errors": 0,
             "rss_mb_start": 700.0, "rss_mb_end": 735.0, "rss_growth": 0.05}}


def test_serve_against_the_engine_and_the_soak_are_judged_and_reported(tmp_path):
    judged = {t.name: t for t in figures.targets(results_with(serve=SERVE_VS_ENGINE))}
    assert (judged["Server vs its engine alone, 1 client"].measured,
            judged["Server vs its engine alone, 1 client"].status) == ("0.933x", "met")
    assert (judged["Server vs its engine alone, 64 clients"].measured,
            judged["Server vs its engine alone, 64 clients"].status) == ("0.714x", "not met")
    assert judged["p99 time to first character at 64 clients"].status == "met"
    assert judged["Server errors over the sweep and the soak"].measured == "0"
    memory = judged["Server memory growth over a 5-minute 64-client soak"]
    assert (memory.measured, memory.status, memory.note) == ("+5.0%", "met", "")
    short = {**SERVE_VS_ENGINE, "soak": {**SERVE_VS_ENGINE["soak"], "duration_s": 3, "clients": 4}}
    note = {t.name: t for t in figures.targets(results_with(serve=short))}[memory.name].note
    assert note == "a 3 s soak of 4 clients, not the target's"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results_with(serve=SERVE_VS_ENGINE)), encoding="utf-8")
    text = write_report(path, tmp_path / "B.md", tmp_path / "plots").read_text(encoding="utf-8")
    assert "| 1 | 3,000 | 2,800 | 0.93x | — | 1.0x |" in text  # results from before the loop's column
    assert ("| 64 | 42,000 | 30,000 | 0.71x | 0.96x | 10.7x | 30.0 / 48.0 | 10.0 / 20.0 | 0.060 (0.010 + 0.050) "
            "| 0.002 | 0 |") in text
    assert "22,500 completions, 9,000,000 characters, 0 errors" in text and "(+5.0%)" in text


HOSTILE = {"model": "shakespeare", "clients": 32, "chars_per_request": 200, "duration_s": 60, "rounds": 4,
           "hold_s": 5.0, "quiet": {"chars_per_s": 3000.0, "requests": 900, "ttfc_p50_ms": 50.0, "ttfc_p99_ms": 200.0,
                                     "errors": 0},
           "hostile": {"chars_per_s": 2300.0, "requests": 800, "ttfc_p50_ms": 70.0, "ttfc_p99_ms": 300.0, "errors": 0,
                       "attacks": {"top_k 2^64 on /v1/generate": {"400": 3}, "five n=16 floods": {"dropped": 10}}},
           "aggregate_ratio": 2300 / 3000, "ttfc_p99_ratio": 1.5, "rss_mb_before": 380.0, "rss_mb_after": 420.0,
           "rss_growth": 40 / 380}


def test_hostile_figures_and_section(tmp_path):
    judged = {t.name: t for t in figures.targets(results_with(hostile=HOSTILE))}
    assert (judged["Beside a hostile client: well-behaved aggregate vs quiet"].measured,
            judged["Beside a hostile client: well-behaved aggregate vs quiet"].status) == ("0.77x", "not met")
    assert judged["Beside a hostile client: well-behaved p99 TTFC vs quiet"].status == "met"
    assert judged["Beside a hostile client: errors of the well-behaved clients"].measured == "0"
    assert judged["Beside a hostile client: server RSS growth"].measured == "+10.5%"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results_with(hostile=HOSTILE)), encoding="utf-8")
    text = write_report(path, tmp_path / "B.md", tmp_path / "plots").read_text(encoding="utf-8")
    assert "| hostile | 2,300 | 800 | 70 ms | 300 ms | 0 |" in text
    assert "| five n=16 floods | dropped x10 |" in text and "dropped after 5 s" in text


def quality_data(loss: float, budget: float = 900, quick: bool = False) -> dict:
    run = {"cell": "lstm", "budget_s": budget, "final_val_loss": loss, "final_val_bpc": loss / 0.693,
           "val_curve": [{"elapsed_s": 10.0, "step": 100, "val_loss": loss + 0.5}], "hparams": {}}
    return {"quick": quick, "corpus": {"is_tinyshakespeare": True, "path": "tinyshakespeare.txt", "chars": 1115394},
            "cpu": {"lstm": run}, "cuda": {}, "cuda_skipped": "no CUDA device on this machine"}


def test_targets_judged_and_missing_ones_not_measured():
    judged = {t.name: t for t in figures.targets(results_with(quality=quality_data(1.35)))}
    assert set(judged) == set(TARGET_NAMES)
    assert judged["tinyshakespeare val loss, 15 min on a 2-core CPU"].status == "met"
    gpu = judged["tinyshakespeare val loss, 10 min on one H100"]
    assert gpu.status == "not measured" and "no GPU was available" in gpu.note
    for name in ("Trainer vs the bare PyTorch loop (lstm)", "Cached corpus encoding",
                 "Server aggregate at 64 clients vs 1 client"):
        assert judged[name].status == "not measured" and "not run" in judged[name].note
    # sample_throughput's JSON keys its batch sizes as strings
    sample = {"single_vs_naive": 9.0, "single_vs_bound": 0.3, "batched_vs_single": {"1": 1.0, "64": 11.6}}
    judged = {t.name: t for t in figures.targets(results_with(sample=sample))}
    assert (judged["64 streams sampled together vs one stream"].measured, judged[
        "64 streams sampled together vs one stream"].status) == ("11.6x", "not met")
    assert judged["Single-stream sampling vs the bandwidth bound"].measured == "30%"
    json_64 = judged["JSON-Schema constraint at 64 streams vs unconstrained"]
    assert json_64.status == "not measured" and "no constrained 64-stream run" in json_64.note
    sample["constrained"] = {"64": {"free_chars_per_s": 100.0, "json_chars_per_s": 70.0, "ratio": 0.7}}
    judged = {t.name: t for t in figures.targets(results_with(sample=sample))}
    json_64 = judged["JSON-Schema constraint at 64 streams vs unconstrained"]
    assert (json_64.measured, json_64.status) == ("0.70x", "not met")
    slow = {t.name: t for t in figures.targets(results_with(quality=quality_data(1.55)))}
    assert slow["tinyshakespeare val loss, 15 min on a 2-core CPU"].status == "not met"
    for data in (quality_data(1.2, budget=1800), quality_data(1.2, quick=True)):
        judged = {t.name: t for t in figures.targets(results_with(quality=data))}
        t = judged["tinyshakespeare val loss, 15 min on a 2-core CPU"]
        assert t.status == "not measured" and "not comparable" in t.note


def test_recipe_targets():
    """The automatic defaults against the best run; every cell's new recipe (sized, or
    auto for the default cell) against today's settings for that cell."""
    def run(cell, loss):
        return {"cell": cell, "budget_s": 900, "final_val_loss": loss, "val_curve": [], "hparams": {}}

    data = quality_data(1.45)
    data["cpu"] = {"auto (gru)": run("gru", 1.40), "gru": run("gru", 1.45), "lstm": run("lstm", 1.50),
                   "lstm sized": run("lstm", 1.39)}
    judged = {t.name: t for t in figures.targets(results_with(quality=data))}
    auto, cells = judged["Automatic defaults vs the best run, 15 min CPU"], judged[
        "Every cell's new recipe vs today's settings, 15 min CPU"]
    assert (auto.measured, auto.status) == ("+0.010 (1.400 vs 1.390, lstm sized)", "met")
    assert (cells.measured, cells.status, cells.note) == ("gru -0.050, lstm -0.110", "met", "not measured for peephole")
    data["cpu"]["lstm sized"] = run("lstm", 1.52)
    judged = {t.name: t for t in figures.targets(results_with(quality=data))}
    assert judged["Every cell's new recipe vs today's settings, 15 min CPU"].status == "not met"
    assert judged["Automatic defaults vs the best run, 15 min CPU"].measured.startswith("+0.000")
    del data["cpu"]["auto (gru)"]
    judged = {t.name: t for t in figures.targets(results_with(quality=data))}
    assert judged["Automatic defaults vs the best run, 15 min CPU"].status == "not measured"


SERVE = {"levels": [{"clients": n, "chars_per_s": 100.0 * n ** 0.8, "ttfc_p99_ms": 2.0 * n, "errors": None}
                    for n in (1, 8, 64)]}


def test_report_tables_and_plots(tmp_path):
    results = results_with(quality=quality_data(1.45), serve=SERVE, train=TRAIN_THROUGHPUT,
                           flops={"peak_gflops": 50.0})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results), encoding="utf-8")
    text = write_report(path, tmp_path / "B.md", tmp_path / "plots").read_text(encoding="utf-8")
    # an older file: no engine
    assert "| 64 | — | 2,786 | — | — | 27.9x | — / 128.0 | — | — | — | — |" in text
    assert "| lstm | 1,000 | 900 | 0.90x | 20.6 |" in text
    assert "Busy machine" not in text
    for name in ("quality-cpu", "serve", "train"):
        assert (tmp_path / "plots" / f"r-{name}.png").is_file(), name
        assert f"](plots/r-{name}.png)" in text
    assert not (tmp_path / "plots" / "r-quality-cuda.png").exists()
    assert "## Analysis" not in text
    # a hand-written analysis kept beside the results goes in under the targets
    (tmp_path / "r.notes.md").write_text("The 64-client p99 waits on **the client**.\n", encoding="utf-8")
    text = write_report(path, tmp_path / "B.md", tmp_path / "plots").read_text(encoding="utf-8")
    assert text.index("## Targets") < text.index("## Analysis of this run") < text.index("## Published references")
    assert "The 64-client p99 waits on **the client**." in text


def test_report_says_not_measured_for_parts_not_run(tmp_path):
    results = results_with(quality=quality_data(1.35))
    results["machine"]["load_average"] = [3.0, 2.5, 2.0]  # other work on the 2 cores
    results["parts"]["train"] = {"status": "not available", "module": "bench.train_throughput"}
    results["parts"]["encode"] = {"status": "failed", "module": "bench.encode", "returncode": 1,
                                  "log_tail": "Traceback\nRuntimeError: boom\n", "command": ["-m", "bench.encode"]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results), encoding="utf-8")
    text = write_report(path, tmp_path / "B.md", tmp_path / "plots").read_text(encoding="utf-8")
    assert "bench.train_throughput is not available in this checkout" in text
    assert "**Busy machine**: a 1-minute load average of 3.0 on 2 cores" in text
    assert "bench.encode failed (exit code 1)" in text and "RuntimeError: boom" in text
    assert ("| tinyshakespeare val loss, 15 min on a 2-core CPU | <= 1.38 nats/char | 1.350 (lstm, 900 s) "
            "| **met** |") in text
    assert "## Serving under load\n\nnot measured: not run" in text
    assert (tmp_path / "plots" / "r-quality-cpu.png").is_file()


def test_flops_per_char_is_twice_the_matrix_weights():
    """Each weight matrix entry is one multiply-add per character in the forward pass
    (the embedding is a lookup; the peephole vectors are elementwise, left out)."""
    from charnet.config import ModelConfig
    from charnet.model import CharRNN

    for cell in GATES:
        model = CharRNN(ModelConfig(vocab_size=66, cell=cell, layers=2, hidden=48, embedding=16))
        weights = sum(p.numel() for name, p in model.named_parameters()
                      if p.dim() == 2 and "peephole" not in name and p is not model.embed.weight)
        f = flops_per_char(cell, 2, 48, 16, 66)
        assert f["forward"] == 2 * weights and f["training"] == 3 * f["forward"], cell


def test_quality_overrides_and_missing_corpus(tmp_path, monkeypatch, capsys):
    sets = quality.parse_sets(["dropout=0.3", "gru.hidden=384", "lstm.lr=3e-3"], ["lstm", "gru"])
    assert sets == {"lstm": {"dropout": 0.3, "lr": 0.003}, "gru": {"dropout": 0.3, "hidden": 384}}
    with pytest.raises(SystemExit, match="not one of"):
        quality.parse_sets(["lstm.colour=blue"], ["lstm"])
    out = tmp_path / "q.json"
    monkeypatch.setattr(sys, "argv", ["quality", "--quick", "--corpus", str(tmp_path / "absent.txt"),
                                      "--json", str(out)])
    quality.main()
    data = json.loads(out.read_text(encoding="utf-8"))
    assert "corpus not available" in data["skipped"] and data["cpu"] == {}
