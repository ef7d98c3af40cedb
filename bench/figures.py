"""The figures a results JSON holds, and each target judged against them.

The report reads the benchmarks this suite owns (flops, encode, quality),
`bench.sample_throughput` and `bench.serve_load` (its ``levels`` rows) by their keys.
`bench.train_throughput` is written on another branch, and serve_load may change, so
their figures are found by name rather than by one fixed layout. A rate is a key such
as ``*_per_s``, ``*_per_second``, ``cps`` or ``throughput`` (not a count like ``chars``).

- train_throughput, per cell (a key or path component ``rnn|lstm|peephole|gru``): the
  trainer's rate (a rate key with ``trainer`` or ``charnet`` on its path, e.g.
  ``cells.lstm.trainer_chars_per_s``) and the bare loop's (the same with ``bare``,
  ``naive``, ``plain``, ``baseline``, ``pytorch`` or ``reference``); the model shape from
  the first object with a ``hidden`` key (``layers``, ``embedding``, ``vocab_size``).
- serve_load: rows of a concurrency sweep, a list of objects with ``clients`` (or
  ``concurrency``, ``users``, ``connections``) or an object keyed by client count, each
  with an aggregate rate (``aggregate``/``total`` in its name, else the rate that is not
  per client, e.g. ``chars_per_s``), the p99 time to first character (``p99`` with
  ``ttfc``/``ttft``/``first``; ``_ms`` or ``_s``) and ``errors``.

A figure not found is None, and the report says "not measured" for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bench.flops import flops_per_char

CELLS = ("rnn", "lstm", "peephole", "gru")
NOT_RATE = {"ratio", "vs", "speedup", "over", "fraction", "pct", "percent", "rounds"}
TRAINER = {"trainer", "charnet"}
BARE = {"bare", "naive", "plain", "baseline", "pytorch", "reference"}
CLIENTS = ("clients", "concurrency", "users", "connections")
LATENCY = {"p50", "p90", "p95", "p99", "ms", "latency", "ttfc", "ttft", "first", "mean", "median", "seconds"}
DEFAULT_SHAPE = {"layers": 2, "hidden": 512, "embedding": 128, "vocab_size": 66}


def tokens(path: tuple) -> set[str]:
    return {t for part in path for t in re.split(r"[^a-z0-9]+", str(part).lower()) if t}


def flatten(obj, path: tuple = ()) -> list[tuple[tuple, float]]:
    """Every numeric leaf with the path of keys leading to it."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [(path, float(obj))]
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in flatten(v, path + (str(k),))]
    if isinstance(obj, list):
        return [leaf for i, v in enumerate(obj) for leaf in flatten(v, path + (i,))]
    return []


def is_rate(t: set[str]) -> bool:
    """Whether a key names a rate: ``*_per_s``, ``*_per_second``, ``cps``, ``throughput``
    (and not a count such as ``chars``)."""
    return bool(t & {"cps", "throughput"}) or ("per" in t and bool(t & {"s", "sec", "second"}))


def pick(leaves, *need: set[str], avoid: set[str] = frozenset(), rate: bool = True) -> float | None:
    """The value of the shortest path (the first of equals, in document order) whose
    tokens meet every `need` set and no `avoid`, and name a rate when `rate`."""
    found = [v for p, v in sorted(leaves, key=lambda leaf: len(leaf[0]))
             if all(tokens(p) & n for n in need) and not tokens(p) & avoid and (not rate or is_rate(tokens(p)))
             and not any(isinstance(c, int) for c in p)]
    return found[0] if found else None


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


def find_dict(obj, key: str) -> dict | None:
    """The first object (breadth first) that has `key`."""
    queue = [obj]
    while queue:
        item = queue.pop(0)
        if isinstance(item, dict):
            if key in item:
                return item
            queue.extend(item.values())
        elif isinstance(item, list):
            queue.extend(item)
    return None


# -- per benchmark ----------------------------------------------------------------------


def train_figures(data: dict | None, flops: dict | None) -> dict:
    """Per cell: trainer and bare-loop chars/s, their ratio, FLOPs per char and the %
    of the measured square-matmul FLOP/s the trainer reaches."""
    if not data:
        return {}
    leaves = [(p, v) for p, v in flatten(data) if "machine" not in p]
    found = find_dict(data, "hidden")
    shape = {**DEFAULT_SHAPE, **{k: found[k] for k in DEFAULT_SHAPE if found and isinstance(found.get(k), int)}}
    if found and isinstance(found.get("vocab"), int):
        shape["vocab_size"] = found["vocab"]
    out = {}
    for cell in CELLS:
        own = [(p, v) for p, v in leaves if cell in tokens(p)]
        trainer = pick(own, TRAINER, avoid=NOT_RATE | BARE)
        bare = pick(own, BARE, avoid=NOT_RATE | TRAINER)
        if trainer is None and bare is None:
            continue
        f = flops_per_char(cell, shape["layers"], shape["hidden"], shape["embedding"], shape["vocab_size"])
        peak = flops.get("peak_gflops") if flops else None
        out[cell] = {"trainer": trainer, "bare": bare,
                     "ratio": trainer / bare if trainer and bare else None,
                     "train_flops_per_char": f["training"],
                     "pct_of_peak": 100 * trainer * f["training"] / (peak * 1e9) if trainer and peak else None,
                     "bare_pct_of_peak": 100 * bare * f["training"] / (peak * 1e9) if bare and peak else None}
    return {"cells": out, "shape": shape, "shape_found": found is not None}


def _rows(data) -> list[tuple[int, dict]]:
    """(clients, row) pairs of the first concurrency sweep found in `data`."""
    queue = [data]
    while queue:
        item = queue.pop(0)
        if isinstance(item, list) and item and all(isinstance(r, dict) for r in item):
            key = next((k for k in CLIENTS if all(isinstance(r.get(k), int) for r in item)), None)
            if key:
                return [(r[key], r) for r in item]
        if isinstance(item, dict):
            if item and all(re.fullmatch(r"\d+", str(k)) and isinstance(v, dict) for k, v in item.items()):
                return [(int(k), v) for k, v in item.items()]
            queue.extend(item.values())
        elif isinstance(item, list):
            queue.extend(item)
    return []


def serve_figures(data: dict | None) -> list[dict]:
    rows = []
    for clients, row in sorted(_rows(data or {}), key=lambda r: r[0]):
        leaves = flatten(row)
        # The aggregate rate: named so, or the rate that is not per client.
        rate = pick(leaves, {"aggregate", "total"}, avoid=LATENCY | NOT_RATE) \
            or pick(leaves, avoid=LATENCY | NOT_RATE | {"client", "clients", "stream"})
        p99 = None
        for p, v in leaves:
            t = tokens(p)
            if "p99" in t and t & {"ttfc", "ttft", "first"}:
                p99 = v if "ms" in t or not t & {"s", "sec", "seconds"} else v * 1000
                break
        errors = row.get("errors") if isinstance(row.get("errors"), int) else None
        rows.append({"clients": clients, "chars_per_s": rate, "ttfc_p99_ms": p99, "errors": errors})
    return rows


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
    train = train_figures(train_data, flops).get("cells", {})
    sample, encode, quality = part(results, "sample"), part(results, "encode"), part(results, "quality")
    serve = {r["clients"]: r for r in serve_figures(part(results, "serve"))}
    no_train, no_sample = status_line(results, "train"), status_line(results, "sample")
    no_serve = status_line(results, "serve")
    out = []

    lstm = train.get("lstm", {})
    out.append(_judge("Trainer vs the bare PyTorch loop (lstm)", ">= 0.9x", lstm.get("ratio"), lambda v: v >= 0.9,
                      "{:.2f}x", no_train))
    peep = train.get("peephole", {}).get("trainer")
    out.append(_judge("Peephole vs lstm training speed", ">= 0.5x",
                      peep / lstm["trainer"] if peep and lstm.get("trainer") else None, lambda v: v >= 0.5,
                      "{:.2f}x", no_train))

    sample = sample or {}
    out.append(_judge("Single-stream sampling vs the naive loop", ">= 5x", sample.get("single_vs_naive"),
                      lambda v: v >= 5, "{:.1f}x", no_sample))
    out.append(_judge("Single-stream sampling vs the bandwidth bound", ">= 50%", sample.get("single_vs_bound"),
                      lambda v: v >= 0.5, "{:.0%}", no_sample))

    one, many = serve.get(1, {}).get("chars_per_s"), serve.get(64, {}).get("chars_per_s")
    out.append(_judge("Server aggregate at 64 clients vs 1 client", ">= 20x", many / one if one and many else None,
                      lambda v: v >= 20, "{:.1f}x",
                      "not measured: no 1- and 64-client rates in serve_load's results" if serve else no_serve))
    out.append(_judge("p99 time to first character at 64 clients", "<= 100 ms", serve.get(64, {}).get("ttfc_p99_ms"),
                      lambda v: v <= 100, "{:.0f} ms",
                      "not measured: no 64-client p99 in serve_load's results" if serve else no_serve))

    out.append(_quality_target(results, quality, "cpu"))
    out.append(_quality_target(results, quality, "cuda"))

    out.append(_judge("Cached corpus encoding", ">= 50 MB/s", (encode or {}).get("cached_mb_per_s"),
                      lambda v: v >= 50, "{:,.0f} MB/s", status_line(results, "encode")))
    if results.get("quick"):
        for t in out:
            if t.status != "not measured":
                t.note = (t.note + "; " if t.note else "") + "quick run: small counts, indicative only"
    return out


def _quality_target(results: dict, quality: dict | None, device: str) -> Target:
    cpu = device == "cpu"
    t = Target("tinyshakespeare val loss, " + ("15 min on a 2-core CPU" if cpu else "10 min on one H100"),
               "<= 1.50 nats/char" if cpu else "<= 1.40 nats/char")
    limit, budget_limit = (1.50, 900) if cpu else (1.40, 600)
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
    text = f"{best['final_val_loss']:.3f} ({best['cell']}, {best['budget_s']:g} s)"
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
