"""The figures a results JSON holds, and each target judged against them.

Each benchmark's own JSON is read by its keys:
- train_throughput: ``results`` rows (``cell``, ``trainer_chars_per_s``,
  ``bare_chars_per_s``, ``trainer_over_bare``), ``ratios["peephole/lstm"]`` and ``shape``;
- serve_load: ``levels`` rows (``clients``, ``chars_per_s``, ``engine_chars_per_s``,
  ``server_over_engine``, time to first character and to headers p50/p99, CPU seconds
  per 1,000 characters, ``errors``) and ``soak`` (``errors``, ``rss_growth``);
- hostile: ``quiet`` and ``hostile`` phases, ``aggregate_ratio``, ``ttfc_p99_ratio``, ``rss_growth``;
- finetune: ``runs`` (``finetune``, ``scratch``, ``scratch_long``: ``best_val_loss``,
  ``final_val_loss``, ``budget_s``, ``curve``) and ``finetune_over_scratch_long``;
- sample_throughput, encode, flops and quality: as they write them.
A figure not there is None, and the report says "not measured" for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from charnet.flops import flops_per_char

DEFAULT_VOCAB = 66  # tinyshakespeare's 65 characters and the unknown id


def part(results: dict, name: str) -> dict | None:
    """A benchmark's own JSON, when it ran and finished."""
    record = results.get("parts", {}).get(name)
    return record.get("data") if record and record.get("status") == "ok" else None


def status_line(results: dict, name: str) -> str:
    """Why a benchmark's figures are missing, in words."""
    record = results.get("parts", {}).get(name)
    if record is None:
        return "not measured: not run"
    if record["status"] == "not available":
        return f"not measured: {record['module']} is not available in this checkout"
    if record["status"] == "failed":
        return f"not measured: {record['module']} failed (exit code {record.get('returncode')})"
    return "not measured"


# -- per benchmark ----------------------------------------------------------------------


def train_figures(data: dict | None, flops: dict | None) -> dict:
    """Per cell: trainer and bare-loop chars/s, their ratio, FLOPs per char and the %
    of the measured square-matmul FLOP/s each reaches."""
    if not data:
        return {}
    shape = {"vocab_size": DEFAULT_VOCAB, **data["shape"]}
    peak = flops.get("peak_gflops") if flops else None
    out = {}
    for row in data["results"]:
        cell, trainer, bare = row["cell"], row["trainer_chars_per_s"], row["bare_chars_per_s"]
        f = flops_per_char(cell, shape["layers"], shape["hidden"], shape["embedding"], shape["vocab_size"])
        out[cell] = {"trainer": trainer, "bare": bare, "ratio": row["trainer_over_bare"],
                     "train_flops_per_char": f["training"],
                     "pct_of_peak": 100 * trainer * f["training"] / (peak * 1e9) if peak else None,
                     "bare_pct_of_peak": 100 * bare * f["training"] / (peak * 1e9) if peak else None}
    return {"cells": out, "shape": shape, "peephole_over_lstm": data.get("ratios", {}).get("peephole/lstm")}


SERVE_KEYS = ("clients", "chars_per_s", "engine_chars_per_s", "server_over_engine", "loop_over_engine", "ttfc_p50_ms",
              "ttfc_p99_ms", "headers_p50_ms", "headers_p99_ms", "server_cpu_s_per_kchar", "api_cpu_s_per_kchar",
              "engine_cpu_s_per_kchar", "client_cpu_s_per_kchar", "errors")


def serve_figures(data: dict | None) -> list[dict]:
    """The concurrency sweep, a row per client count: the server's and its engine's
    chars/s and their ratio, the engine loop's ratio to the engine, time to first
    character and to the response headers, CPU per 1,000 characters (server, its API
    and engine processes, the load generator), errors. A figure older results lack is
    None."""
    return [{k: row.get(k) for k in SERVE_KEYS}
            for row in sorted((data or {}).get("levels", []), key=lambda r: r["clients"])]


def hostile_figures(data: dict | None) -> dict:
    """Well-behaved clients with and without the hostile one: their aggregate and p99
    time to first character in each phase, the ratios, errors and the server's RSS."""
    if not data:
        return {}
    return {"quiet": data["quiet"], "hostile": data["hostile"], "aggregate": data.get("aggregate_ratio"),
            "ttfc": data.get("ttfc_p99_ratio"), "errors": data["quiet"]["errors"] + data["hostile"]["errors"],
            "rss_growth": data.get("rss_growth"), "attacks": data["hostile"].get("attacks", {})}


def quality_best(data: dict | None, device: str) -> dict | None:
    """The cell with the lowest final validation loss on `device`."""
    runs = [r for r in (data or {}).get(device, {}).values() if r.get("final_val_loss") is not None]
    return min(runs, key=lambda r: r["final_val_loss"]) if runs else None


# -- targets ----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    goal: str
    measured: str = "not measured"
    status: str = "not measured"
    note: str = ""


def _judge(name: str, goal: str, value: float | None, ok, fmt: str, missing: str) -> Target:
    """A target met when `ok(value)`; "not measured" with the reason `missing` when
    there is no value."""
    target = Target(name, goal)
    if value is None:
        target.note = missing
    else:
        target.measured, target.status = fmt.format(value), "met" if ok(value) else "not met"
    return target


def targets(results: dict) -> list[Target]:
    train_data, flops = part(results, "train"), part(results, "flops")
    train = train_figures(train_data, flops)
    sample, encode, quality = part(results, "sample"), part(results, "encode"), part(results, "quality")
    serve = {r["clients"]: r for r in serve_figures(part(results, "serve"))}
    no_train, no_sample = status_line(results, "train"), status_line(results, "sample")
    no_serve = status_line(results, "serve")
    out = []

    out.append(_judge("Trainer vs the bare PyTorch loop (lstm)", ">= 0.9x", train.get("cells", {}).get("lstm", {})
                      .get("ratio"), lambda v: v >= 0.9, "{:.2f}x", no_train))
    out.append(_judge("Peephole vs lstm training speed", ">= 0.5x", train.get("peephole_over_lstm"),
                      lambda v: v >= 0.5, "{:.2f}x", no_train))

    sample = sample or {}
    out.append(_judge("Single-stream sampling vs the naive loop", ">= 5x", sample.get("single_vs_naive"),
                      lambda v: v >= 5, "{:.1f}x", no_sample))
    out.append(_judge("Single-stream sampling vs the bandwidth bound", ">= 50%", sample.get("single_vs_bound"),
                      lambda v: v >= 0.5, "{:.0%}", no_sample))
    out.append(_judge("64 streams sampled together vs one stream", ">= 20x",
                      (sample.get("batched_vs_single") or {}).get("64"), lambda v: v >= 20, "{:.1f}x",
                      "not measured: no 64-stream run in sample_throughput's results" if sample else no_sample))
    out.append(_judge("JSON-Schema constraint at 64 streams vs unconstrained", ">= 0.75x",
                      ((sample.get("constrained") or {}).get("64") or {}).get("ratio"), lambda v: v >= 0.75,
                      "{:.2f}x", "not measured: no constrained 64-stream run in sample_throughput's results"
                      if sample else no_sample))

    one, many = serve.get(1, {}).get("chars_per_s"), serve.get(64, {}).get("chars_per_s")
    out.append(_judge("Server aggregate at 64 clients vs 1 client", ">= 20x", many / one if one and many else None,
                      lambda v: v >= 20, "{:.1f}x",
                      "not measured: no 1- and 64-client rates in serve_load's results" if serve else no_serve))
    for clients, goal in ((1, 0.90), (64, 0.75)):
        out.append(_judge(f"Server vs its engine alone, {clients} client{'s' if clients > 1 else ''}", f">= {goal:.2f}x",
                          serve.get(clients, {}).get("server_over_engine"), lambda v, g=goal: v >= g,
                          "{:.3f}x",  # 0.897 must not read as the 0.90 it misses
                          f"not measured: no {clients}-client engine and server rates in serve_load's results"
                          if serve else no_serve))
    out.append(_judge("p99 time to first character at 64 clients", "<= 50 ms", serve.get(64, {}).get("ttfc_p99_ms"),
                      lambda v: v <= 50, "{:.0f} ms",
                      "not measured: no 64-client p99 in serve_load's results" if serve else no_serve))
    soak = (part(results, "serve") or {}).get("soak") or {}
    no_soak = "not measured: no soak in serve_load's results" if serve else no_serve
    errors = sum(r["errors"] for r in serve.values()) + soak["errors"] if serve and soak else None
    out.append(_judge("Server errors over the sweep and the soak", "0", errors, lambda v: v == 0, "{:d}", no_soak))
    memory = _judge("Server memory growth over a 5-minute 64-client soak", "< 10%", soak.get("rss_growth"),
                    lambda v: v < 0.10, "{:+.1%}", no_soak)
    if soak and (soak["duration_s"] < 300 or soak["clients"] != 64):
        memory.note = f"a {soak['duration_s']:g} s soak of {soak['clients']} clients, not the target's"
    out.append(memory)

    hostile, no_hostile = hostile_figures(part(results, "hostile")), status_line(results, "hostile")
    out.append(_judge("Beside a hostile client: well-behaved aggregate vs quiet", ">= 0.80x", hostile.get("aggregate"),
                      lambda v: v >= 0.8, "{:.2f}x", no_hostile))
    out.append(_judge("Beside a hostile client: well-behaved p99 TTFC vs quiet", "<= 2.0x", hostile.get("ttfc"),
                      lambda v: v <= 2.0, "{:.2f}x", no_hostile))
    out.append(_judge("Beside a hostile client: errors of the well-behaved clients", "0", hostile.get("errors"),
                      lambda v: v == 0, "{:d}", no_hostile))
    out.append(_judge("Beside a hostile client: server RSS growth", "< 15%", hostile.get("rss_growth"),
                      lambda v: v < 0.15, "{:+.1%}", no_hostile))

    finetune = part(results, "finetune") or {}
    runs = finetune.get("runs", {})
    out.append(_judge("Sonnets: 2 min fine-tuned from shakespeare vs 10 min from scratch", "lower val loss",
                      finetune.get("finetune_over_scratch_long"), lambda v: v < 1.0,
                      f"{{:.3f}}x ({runs['finetune']['best_val_loss']:.3f} vs {runs['scratch_long']['best_val_loss']:.3f})"
                      if runs else "{:.3f}x", status_line(results, "finetune")))
    out.append(_quality_target(results, quality, "cpu"))
    out.append(_quality_target(results, quality, "cuda"))
    out += _recipe_targets(results, quality)

    out.append(_judge("Cached corpus encoding", ">= 50 MB/s", (encode or {}).get("cached_mb_per_s"),
                      lambda v: v >= 50, "{:,.0f} MB/s", status_line(results, "encode")))
    if results.get("quick"):
        for t in out:
            if t.status != "not measured":
                t.note = (t.note + "; " if t.note else "") + "quick run: small counts, indicative only"
    return out


QUALITY_CELLS = ("lstm", "gru", "peephole")
"""The cells bench.quality trains by default."""


def _recipe_targets(results: dict, quality: dict | None) -> list[Target]:
    """The automatic defaults against the best run, and each cell's sized recipe against
    today's settings (bench.quality's recipes), on the CPU."""
    runs = {name: r for name, r in ((quality or {}).get("cpu") or {}).items() if r.get("final_val_loss") is not None}
    missing = status_line(results, "quality") if quality is None else "not measured: no such runs finished"
    best = quality_best(quality, "cpu")
    auto = next((r for name, r in runs.items() if name.startswith("auto")), None)
    gap = auto["final_val_loss"] - best["final_val_loss"] if auto and best else None
    out = [_judge("Automatic defaults vs the best run, 15 min CPU", "within 0.03 nats/char", gap, lambda v: v <= 0.03,
                  f"+{{:.3f}} ({auto['final_val_loss']:.3f} vs {best['final_val_loss']:.3f}, "
                  f"{next(name for name, r in runs.items() if r is best)})"
                  if gap is not None else "{}", missing)]
    # A cell's new recipe: its sized run, or the auto run for the default cell.
    new = {r["cell"]: r for name, r in runs.items() if name.endswith(" sized") or name.startswith("auto")}
    pairs = {cell: new[cell]["final_val_loss"] - runs[cell]["final_val_loss"] for cell in new if cell in runs}
    worst = max(pairs.values()) if pairs else None
    text = ", ".join(f"{cell} {d:+.3f}" for cell, d in sorted(pairs.items()))
    out.append(_judge("Every cell's new recipe vs today's settings, 15 min CPU", "lower val loss for every cell", worst,
                      lambda v: v < 0, text.replace("{", "{{").replace("}", "}}") or "{}", missing))
    unpaired = [cell for cell in QUALITY_CELLS if cell not in pairs]
    if pairs and unpaired:
        out[-1].note = f"not measured for {', '.join(unpaired)}"
    return out


def _quality_target(results: dict, quality: dict | None, device: str) -> Target:
    cpu = device == "cpu"
    t = Target("tinyshakespeare val loss, " + ("15 min on a 2-core CPU" if cpu else "10 min on one H100"),
               "<= 1.38 nats/char" if cpu else "<= 1.33 nats/char")
    limit, budget_limit = (1.38, 900) if cpu else (1.33, 600)
    if quality is None:
        t.note = status_line(results, "quality")
        return t
    if quality.get("skipped"):
        t.note = f"not measured: {quality['skipped']}"
        return t
    if not cpu and quality.get("cuda_skipped"):
        t.note = f"not measured: no GPU was available ({quality['cuda_skipped']})"
        return t
    best = quality_best(quality, device)
    if best is None:
        t.note = "not measured: no run finished"
        return t
    text = f"{best['final_val_loss']:.3f} ({best.get('run', best['cell'])}, {best['budget_s']:g} s)"
    problems = []
    if quality.get("quick"):
        problems.append("a quick smoke run (tiny model)")
    if not quality.get("corpus", {}).get("is_tinyshakespeare"):
        problems.append("not the tinyshakespeare corpus")
    if best["budget_s"] > budget_limit:
        problems.append(f"a {best['budget_s']:g} s budget, over the target's {budget_limit} s")
    if problems:
        t.measured, t.note = text, "not comparable with the target: " + ", ".join(problems)
        return t
    t.measured, t.status = text, "met" if best["final_val_loss"] <= limit else "not met"
    machine = results.get("machine", {})
    if cpu and machine.get("cores") != 2:
        t.note = f"measured on {machine.get('cores')} cores, not 2"
    if not cpu:
        gpu = (machine.get("gpu") or {}).get("name", "unknown GPU")
        if "H100" not in gpu:
            t.note = f"measured on {gpu}, not an H100"
    return t
