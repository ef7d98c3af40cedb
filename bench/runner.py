"""`python -m bench all`: run every benchmark, collect one results JSON, write the report.

Each benchmark is its own module, run by name in a subprocess with ``--json`` (and
``--quick`` for a smoke run), so one that crashes cannot take the others down, each
starts from a fresh interpreter (no warm caches or threads left over), and modules
that do not exist in this checkout yet are skipped with a "not available" line.

The results file is named after the date and the machine, and holds the machine's
description (CPU, cores, RAM, GPU, torch, threads, date, git commit, load average) and,
per benchmark, its status, command, wall time and its own JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from bench.common import ROOT, machine, machine_slug, write_json

# name -> module, in the order they run: the short, noise-sensitive measurements first,
# the long training runs last.
PARTS = {
    "flops": "bench.flops",
    "encode": "bench.encode",
    "novelty": "bench.novelty",
    "sample": "bench.sample_throughput",
    "train": "bench.train_throughput",
    "serve": "bench.serve_load",
    "hostile": "bench.hostile",
    "finetune": "bench.finetune",
    "quality": "bench.quality",
}
SCHEMA = 1
LOG_TAIL = 4000  # characters of a benchmark's output kept in the results


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def part_command(name: str, json_path: Path, args) -> list[str]:
    cmd = [sys.executable, "-m", PARTS[name], "--json", str(json_path)]
    if args.quick:
        cmd.append("--quick")
    if name == "quality":
        budget = args.budget or ("20s" if args.quick else None)
        cmd += ["--budget", budget] if budget else []
        cmd += ["--gpu-budget", args.gpu_budget] if args.gpu_budget else []
        cmd += ["--cells", args.cells] if args.cells else []
        cmd += ["--recipes", args.recipes] if args.recipes else []
        cmd += ["--continue-from", str(args.quality_from)] if args.quality_from else []
        cmd += ["--out", str(args.runs)] if args.runs else []
    return cmd


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM the benchmark's process group, SIGKILL it if still there after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if wait is not None:
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass


def run_part(name: str, args, scratch: Path) -> dict:
    """Run one benchmark, echoing its output; its record for the results file."""
    module = PARTS[name]
    if not available(module):
        print(f"== {name}: not available ({module} is not in this checkout)", flush=True)
        return {"status": "not available", "module": module}
    json_path = scratch / f"{name}.json"
    cmd = part_command(name, json_path, args)
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": os.environ.get("COLUMNS", "120")}
    start = time.monotonic()
    output: list[str] = []
    # A session of its own, so a benchmark that hangs is stopped with everything it
    # started (a server, its workers), and nothing else.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # The quality runs bound their own training subprocesses by their budgets.
    timer = threading.Timer(args.timeout, stop) if args.timeout and name != "quality" else None
    if timer:
        timer.start()
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            print(f"   {line}", end="", flush=True)
            output.append(line)
        code = proc.wait()
    except BaseException:
        # Ctrl-C reaches only the runner (the benchmark has its own session): stop it too.
        _terminate(proc)
        raise
    finally:
        if timer:
            timer.cancel()
    record = {"module": module, "command": cmd[1:], "returncode": code, "wall_s": round(time.monotonic() - start, 2),
              "log_tail": "".join(output)[-LOG_TAIL:]}
    if timed_out.is_set():
        record["error"] = f"stopped after the {args.timeout:g} s timeout"
    if json_path.exists():
        try:
            record["data"] = json.loads(json_path.read_text(encoding="utf-8"))
        except ValueError as e:
            record["error"] = f"unreadable JSON: {e}"
    record["status"] = "ok" if code == 0 and "data" in record and "error" not in record else "failed"
    print(f"== {name}: {record['status']} in {record['wall_s']:.0f}s", flush=True)
    return record


def kept_parts(previous: Path, running: list[str], info: dict) -> dict:
    """The parts of an earlier results file that this run does not repeat (a long quality
    run need not be redone after a change to the server), each marked with the commit
    and date it was measured at. Only from the same machine: figures from elsewhere
    would not compare."""
    old = json.loads(previous.read_text(encoding="utf-8"))
    if machine_slug(old["machine"]) != machine_slug(info):
        raise SystemExit(f"bench: --keep {previous}: measured on {old['machine'].get('cpu')}, not this machine")
    kept = {}
    for name, record in old["parts"].items():
        if name not in running and record.get("status") == "ok":
            # A part the earlier file had kept itself keeps naming where it was measured.
            kept[name] = record if "kept_from" in record else {
                **record, "kept_from": {"file": previous.name, "git_commit": old["machine"].get("git_commit"),
                                        "date": old["machine"].get("date")}}
    return kept


def results_path(out: Path, info: dict) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d-%H%M%S")
    return out / f"{stamp}-{machine_slug(info)}.json"


def run_all(args) -> int:
    names = list(PARTS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        print(f"bench: unknown benchmark {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['threads']} torch threads, torch {info['torch']}, "
          f"commit {info['git_commit']}, load average {info['load_average']}", flush=True)
    results = {"schema": SCHEMA, "machine": info, "quick": args.quick,
               "args": {"only": names, "budget": args.budget, "gpu_budget": args.gpu_budget, "cells": args.cells,
                        "recipes": args.recipes},
               "parts": {}}
    started = time.monotonic()
    if args.keep:
        results["parts"].update(kept_parts(args.keep, names, info))
    with tempfile.TemporaryDirectory(prefix="charnet-bench-") as scratch:
        for name in [n for n in PARTS if n in names]:
            results["parts"][name] = run_part(name, args, Path(scratch))
    results["parts"] = {n: results["parts"][n] for n in PARTS if n in results["parts"]}
    results["wall_s"] = round(time.monotonic() - started, 1)
    try:
        results["machine"]["load_average_end"] = list(os.getloadavg())
    except OSError:
        pass
    path = results_path(args.out, info)
    write_json(path, results)
    print(f"results: {path}")

    from bench.report import write_report

    report = write_report(path, args.report, args.out)
    print(f"report: {report}")
    failed = [n for n, r in results["parts"].items() if r["status"] == "failed"]
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
