"""Load test of `charnet serve`: a concurrency sweep of streaming clients.

    python -m bench.serve_load                       # untrained 2x512 LSTM (same speed as a trained one)
    python -m bench.serve_load runs/shakespeare-lstm --json results.json
    python -m bench.serve_load --url http://127.0.0.1:8000 --model shakespeare
    python -m bench.serve_load --quick               # smoke run: 1, 2, 4 clients, short texts

For each level, that many clients start together, each streaming one completion of
`--chars` characters (temperature 1, its own seed) over /v1/completions. Reported per
level: aggregate characters per second (all characters over the wall time of the level),
time to first character p50/p99, errors, and the ratios against one client; and the
server's resident memory before and after the sweep (when this script started it).

Targets (the serving issue): at 64 clients, aggregate >= 20x one client, p99 time to
first character <= 100 ms, no errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, free_port, untrained_lstm, write_json

LEVELS = (1, 2, 4, 8, 16, 32, 64, 128)
PROMPTS = ("ROMEO:\n", "JULIET:\n", "First Citizen:\n", "KING HENRY IV:\n")

def untrained_checkpoint(directory: Path) -> Path:
    """`bench.common.untrained_lstm`, saved as a checkpoint to serve."""
    from charnet.checkpoint import save_checkpoint

    target = directory / "lstm-2x512"
    save_checkpoint(target, *untrained_lstm(), {"metrics": {}})
    return target


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process and its children (workers), MiB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
        for p in pids:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    except OSError:
        return None
    return total / 1024


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def one_client(http: httpx.AsyncClient, url: str, model: str, index: int, chars: int,
                     headers: dict[str, str]) -> tuple[int, float | None, str | None, float | None]:
    """(characters received, seconds to the first, error or None, seconds to the response
    headers: the part of the wait spent connecting and being admitted)."""
    body = {"model": model, "prompt": PROMPTS[index % len(PROMPTS)], "max_tokens": chars, "temperature": 1.0,
            "seed": index, "stream": True}
    start = time.perf_counter()
    first, received, finished, head = None, 0, False, None
    try:
        async with http.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as r:
            head = time.perf_counter() - start
            if r.status_code != 200:
                return 0, None, f"HTTP {r.status_code}: {(await r.aread())[:200]!r}", head
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return received, first, f"error event: {event['error'].get('message')}", head
                choice = event["choices"][0]
                if choice["text"]:
                    if first is None:
                        first = time.perf_counter() - start
                    received += len(choice["text"])
                finished = finished or choice["finish_reason"] is not None
    except httpx.HTTPError as e:
        return received, first, f"{type(e).__name__}: {e}", head
    if not finished or received != chars:
        return received, first, f"incomplete: {received} of {chars} characters", head
    return received, first, None, head


async def level(url: str, model: str, clients: int, chars: int, headers: dict[str, str]) -> dict:
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=30), limits=limits) as http:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(http, url, model, i, chars, headers) for i in range(clients)))
        wall = time.perf_counter() - start
    ttfc = [r[1] for r in results if r[1] is not None]
    heads = [r[3] for r in results if r[3] is not None]
    errors = [r[2] for r in results if r[2] is not None]
    total = sum(r[0] for r in results)
    return {"clients": clients, "chars": total, "wall_s": round(wall, 3), "chars_per_s": round(total / wall, 1),
            "per_client_chars_per_s": round(total / wall / clients, 1),
            "ttfc_p50_ms": round(statistics.median(ttfc) * 1e3, 1) if ttfc else None,
            "ttfc_p99_ms": round(percentile(ttfc, 99) * 1e3, 1) if ttfc else None,
            "headers_p99_ms": round(percentile(heads, 99) * 1e3, 1) if heads else None,
            "errors": len(errors), "error_examples": errors[:3]}


def start_server(checkpoint: Path, options: list[str]) -> tuple[subprocess.Popen, str]:
    """`charnet serve CHECKPOINT OPTIONS` on a free loopback port, once it is ready."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "charnet", "serve", str(checkpoint), "--port", str(port),
                             "--log-level", "warning", *options],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"charnet serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("charnet serve did not become ready in 180 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint to serve (default: an untrained 2x512 LSTM)")
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--model", help="model name at --url (default: the first one it lists)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="client counts, comma-separated")
    parser.add_argument("--chars", type=int, default=400, help="characters each client streams")
    parser.add_argument("--quick", action="store_true", help="smoke run: levels 1,2,4 and 24 characters")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `charnet serve` option (repeat)")
    args = parser.parse_args(argv)
    levels = [1, 2, 4] if args.quick else [int(x) for x in args.levels.split(",")]
    chars = 24 if args.quick else args.chars
    headers = {"Authorization": f"Bearer {os.environ['CHARNET_API_KEY']}"} if os.environ.get("CHARNET_API_KEY") else {}

    proc, tmp = None, None
    if args.url:
        url = args.url.rstrip("/")
    else:
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        if checkpoint is None:
            tmp = tempfile.TemporaryDirectory(prefix="charnet-bench-")
            checkpoint = untrained_checkpoint(Path(tmp.name))
        n = str(max(levels))
        proc, url = start_server(checkpoint, ["--max-concurrency", n, "--max-queue", n, "--max-chars-cap", "100000",
                                              "--max-n", "128", *args.server_arg])
    try:
        model = args.model or httpx.get(f"{url}/v1/models", headers=headers, timeout=30).json()["data"][0]["id"]
        info = httpx.get(f"{url}/v1/models/{model}", headers=headers, timeout=30).json().get("charnet", {})
        rss_before = rss_mb(proc.pid) if proc else None
        asyncio.run(level(url, model, 1, min(chars, 16), headers))  # warm up
        rows = []
        print(f"model {model}: {info.get('cell')} {info.get('layers')}x{info.get('hidden')}, "
              f"{chars} characters per client, {os.cpu_count()} CPUs")
        print(f"{'clients':>7} {'chars/s':>9} {'per client':>10} {'vs 1':>6} {'TTFC p50':>9} {'TTFC p99':>9} "
              f"{'headers p99':>11} {'errors':>6}")
        for clients in levels:
            row = asyncio.run(level(url, model, clients, chars, headers))
            row["ratio_vs_1"] = round(row["chars_per_s"] / rows[0]["chars_per_s"], 2) if rows else 1.0
            rows.append(row)
            print(f"{clients:>7} {row['chars_per_s']:>9.0f} {row['per_client_chars_per_s']:>10.1f} "
                  f"{row['ratio_vs_1']:>5.1f}x {row['ttfc_p50_ms']:>7} ms {row['ttfc_p99_ms']:>7} ms "
                  f"{row['headers_p99_ms']:>8} ms {row['errors']:>6}", flush=True)
            for example in row["error_examples"]:
                print(f"        error: {example}")
        rss_after = rss_mb(proc.pid) if proc else None
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()
    if rss_before is not None:
        print(f"server RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after")
    at64 = next((r for r in rows if r["clients"] == 64), None)
    targets = None
    if at64:
        targets = {"aggregate_64_vs_1_ge_20x": at64["ratio_vs_1"] >= 20,
                   "ttfc_p99_64_le_100ms": at64["ttfc_p99_ms"] is not None and at64["ttfc_p99_ms"] <= 100,
                   "zero_errors": all(r["errors"] == 0 for r in rows)}
        print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    if args.json:
        write_json(args.json, {"model": model, "model_info": info, "chars_per_client": chars,
                               "cpus": os.cpu_count(), "levels": rows, "rss_mb_before": rss_before,
                               "rss_mb_after": rss_after, "targets": targets})
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
