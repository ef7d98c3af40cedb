"""Isolation under attack: well-behaved streaming clients beside a hostile one, in one run.

    python -m bench.hostile                        # the bundled model, charnet serve's defaults
    python -m bench.hostile --duration 60 --clients 32 --json results.json
    python -m bench.hostile --quick                # smoke run: 4 clients, 8 s phases

Two phases of --duration seconds against one `charnet serve`: quiet (the clients alone)
and hostile (the clients and a hostile client). Each well-behaved client streams one
completion after another (`--chars` characters, its own seeds) and records its time to
first character; the hostile client cycles through every request the isolation issue
saw hurt the service (huge numbers, 100k prompts, long stops, amplifying logprobs, n=64
floods, lone surrogates, random methods, long scores), each as first seen and as the
largest variant the server's limits let through, some abandoned mid-way. The clients
speak raw HTTP/1.1 (`bench.lean_http`), so the load generator takes little of the CPU
it shares with the server.

Targets (the isolation issue): hostile-phase aggregate within 20% of the quiet phase,
p99 time to first character at most 2x the quiet phase's, zero errors for the
well-behaved clients, server RSS growth under 15% over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

from bench.common import ROOT, write_json
from bench.lean_http import Connection
from bench.serve_load import PROMPTS, percentile, rss_mb, start_server

BUNDLED = ROOT / "checkpoints" / "shakespeare"
SURROGATE = "\ud800"


async def client(host: str, port: int, model: str, index: int, chars: int, until: float, out: dict) -> None:
    """Stream completions until `until`; record characters, first-character times, errors."""
    conn = Connection(host, port)
    k = 0
    try:
        while time.perf_counter() < until:
            body = {"model": model, "prompt": PROMPTS[index % len(PROMPTS)], "max_tokens": chars,
                    "temperature": 1.0, "seed": index * 100_000 + k, "stream": True}
            k += 1
            start, first, received, finished = time.perf_counter(), None, 0, False
            try:
                async for event in conn.events("/v1/completions", body):
                    if event == "[DONE]":
                        continue
                    if "status" in event or "error" in event:
                        raise RuntimeError(str(event)[:200])
                    choice = event["choices"][0]
                    if choice["text"] and first is None:
                        first = time.perf_counter() - start
                    received += len(choice["text"])
                    finished = finished or choice["finish_reason"] is not None
                if not finished or received != chars:
                    raise RuntimeError(f"incomplete: {received} of {chars} characters")
            except (OSError, RuntimeError, ValueError) as e:
                out["errors"].append(f"{type(e).__name__}: {e}")
                await conn.close()
            out["chars"] += received
            if first is not None:
                out["ttfc"].append(first)
    finally:
        await conn.close()


def attacks(model: str) -> list[tuple[str, dict]]:
    """(name, what to send) for every hostile request: `body` goes to `path` with
    `method`; `streams` opens that many streams at once, read for `hold` seconds and
    then dropped; `repeat` sends it that many times at once."""
    long_stops = ["x" * 4000] * 15
    limit_stops = ["".join(random.Random(i).choice("qzxj") for _ in range(256)) for i in range(16)]
    text = (ROOT / "corpora" / "shakespeare.txt").read_text(encoding="utf-8")
    c = {"model": model}
    return [
        ("top_k 2^64 on /v1/generate", {"path": "/v1/generate", "body": {**c, "length": 1, "top_k": 2 ** 64}}),
        ("top_k 2^63 on /v1/completions", {"body": {**c, "max_tokens": 1, "top_k": 2 ** 63}}),
        ("100k-character prompt", {"body": {**c, "prompt": text[:100_000], "max_tokens": 20}}),
        ("30k-character prompt, dropped after 2 s", {"body": {**c, "prompt": text[:30_000], "max_tokens": 20},
                                                     "streams": 1, "hold": 2}),
        ("15 stops of 4,000 characters, n=4", {"body": {**c, "stop": long_stops, "n": 4, "max_tokens": 4000}}),
        ("16 stops of 256 characters, n=4", {"body": {**c, "stop": limit_stops, "n": 4, "max_tokens": 1000}}),
        ("logprobs=20, n=64, 4,096 tokens", {"body": {**c, "logprobs": 20, "n": 64, "max_tokens": 4096}}),
        ("logprobs=20, n=16, 4,096 tokens", {"body": {**c, "logprobs": 20, "n": 16, "max_tokens": 4096}}),
        ("logprobs=20, 4,096 tokens", {"body": {**c, "logprobs": 20, "max_tokens": 4096}}),
        ("echo + logprobs, n=64, 100k prompt", {"body": {**c, "prompt": text[:100_000], "echo": True,
                                                         "logprobs": 5, "n": 64, "max_tokens": 1}}),
        ("five n=64 floods", {"body": {**c, "n": 64, "max_tokens": 4096, "stream": True}, "repeat": 5}),
        ("five n=16 floods, dropped after 10 s", {"body": {**c, "n": 16, "max_tokens": 4096, "stream": True},
                                                  "streams": 5, "hold": 10}),
        ("lone surrogate, echoed", {"body": {**c, "prompt": SURROGATE, "echo": True, "max_tokens": 5}}),
        ("lone surrogate, streamed", {"body": {**c, "prompt": "a" + SURROGATE, "stream": True}}),
        ("lone surrogate in a score", {"path": "/v1/score", "body": {**c, "text": "ab" + SURROGATE}}),
        ("random methods and paths", {"method": "random", "repeat": 50}),
        ("four 20k-character scores, top=20", {"path": "/v1/score", "body": {**c, "text": text[:20_000], "top": 20},
                                               "repeat": 4}),
        ("four 20k-character scores, top=12, dropped after 10 s",
         {"path": "/v1/score", "body": {**c, "text": text[:20_000], "top": 12}, "streams": 4, "hold": 10}),
        ("invalid JSON", {"body": b'{"model": "', "repeat": 3}),
    ]


async def _one(host: str, port: int, spec: dict, rng: random.Random) -> str:
    """Send one hostile request; the status it got (or what went wrong)."""
    conn = Connection(host, port)
    try:
        if spec.get("method") == "random":
            method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(3, 9)))
            path = "/" + "/".join(str(rng.randint(0, 10 ** 9)) for _ in range(rng.randint(1, 3)))
            return str((await conn.request(method, rng.choice([path, "/v1/completions", "/metrics"]))).status)
        r = await conn.request("POST", spec.get("path", "/v1/completions"), spec["body"])
        return str(r.status)
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        return type(e).__name__
    finally:
        await conn.close()


async def _held(host: str, port: int, spec: dict) -> str:
    """Open a request, read what comes for `hold` seconds, then drop the connection."""
    conn = Connection(host, port)
    status = "open"
    try:
        async def read() -> None:
            nonlocal status
            if spec["body"].get("stream"):
                async for event in conn.events(spec.get("path", "/v1/completions"), spec["body"]):
                    status = str(event.get("status", 200)) if isinstance(event, dict) else status
            else:
                status = str((await conn.request("POST", spec.get("path", "/v1/completions"), spec["body"])).status)

        await asyncio.wait_for(read(), spec["hold"])
    except asyncio.TimeoutError:
        status = "dropped"
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        status = type(e).__name__
    finally:
        await conn.close()
    return status


async def hostile(host: str, port: int, model: str, until: float, seen: dict) -> None:
    """Cycle through `attacks` until `until`, recording what each got."""
    rng = random.Random(0)
    specs = attacks(model)
    while True:
        for name, spec in specs:
            if time.perf_counter() >= until:
                return
            if "streams" in spec:
                got = await asyncio.gather(*(_held(host, port, spec) for _ in range(spec["streams"])))
            else:
                got = await asyncio.gather(*(_one(host, port, spec, rng) for _ in range(spec.get("repeat", 1))))
            for status in got:
                seen.setdefault(name, {}).setdefault(status, 0)
                seen[name][status] += 1


async def phase(host: str, port: int, model: str, clients: int, chars: int, duration: float,
                with_hostile: bool) -> dict:
    stats = {"chars": 0, "ttfc": [], "errors": []}
    seen: dict = {}
    start = time.perf_counter()
    until = start + duration
    tasks = [asyncio.create_task(client(host, port, model, i, chars, until, stats)) for i in range(clients)]
    bad = asyncio.create_task(hostile(host, port, model, until, seen)) if with_hostile else None
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    if bad is not None:
        bad.cancel()  # an attack still in flight is abandoned: the server sees a disconnect
        await asyncio.gather(bad, return_exceptions=True)
    ttfc = stats["ttfc"]
    return {"wall_s": round(wall, 2), "chars": stats["chars"], "chars_per_s": round(stats["chars"] / wall, 1),
            "requests": len(ttfc), "ttfc_p50_ms": round(statistics.median(ttfc) * 1e3, 1) if ttfc else None,
            "ttfc_p99_ms": round(percentile(ttfc, 99) * 1e3, 1) if ttfc else None,
            "errors": len(stats["errors"]), "error_examples": stats["errors"][:3],
            **({"attacks": seen} if with_hostile else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(BUNDLED), help="checkpoint to serve [default: the "
                        "bundled checkpoints/shakespeare]")
    parser.add_argument("--clients", type=int, default=32, help="well-behaved streaming clients [default: 32]")
    parser.add_argument("--chars", type=int, default=200, help="characters per completion [default: 200]")
    parser.add_argument("--duration", type=float, default=60, help="seconds per phase [default: 60]")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 clients, 8 s phases, 50 characters")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    clients, duration, chars = (4, 8.0, 50) if args.quick else (args.clients, args.duration, args.chars)

    proc, url = start_server(Path(args.checkpoint), [])  # charnet serve's defaults
    host, port = url.removeprefix("http://").split(":")
    port = int(port)
    try:
        model = Path(args.checkpoint).name
        asyncio.run(phase(host, port, model, 2, 16, 1.0, False))  # warm up
        rss_before = rss_mb(proc.pid)
        print(f"{clients} clients streaming {chars} characters each, {duration:g} s per phase", flush=True)
        quiet = asyncio.run(phase(host, port, model, clients, chars, duration, False))
        print(f"quiet:   {quiet['chars_per_s']:>8.0f} chars/s, TTFC p99 {quiet['ttfc_p99_ms']} ms, "
              f"{quiet['errors']} errors", flush=True)
        loud = asyncio.run(phase(host, port, model, clients, chars, duration, True))
        print(f"hostile: {loud['chars_per_s']:>8.0f} chars/s, TTFC p99 {loud['ttfc_p99_ms']} ms, "
              f"{loud['errors']} errors", flush=True)
        rss_after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
    for name, statuses in loud["attacks"].items():
        print(f"  {name}: " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())))
    for example in quiet["error_examples"] + loud["error_examples"]:
        print(f"  error: {example}")
    aggregate = loud["chars_per_s"] / quiet["chars_per_s"] if quiet["chars_per_s"] else None
    ttfc = loud["ttfc_p99_ms"] / quiet["ttfc_p99_ms"] if quiet["ttfc_p99_ms"] and loud["ttfc_p99_ms"] else None
    growth = (rss_after - rss_before) / rss_before if rss_before and rss_after else None
    print(f"hostile / quiet: aggregate {aggregate:.2f}x, TTFC p99 {ttfc:.2f}x; server RSS {rss_before:.0f} -> "
          f"{rss_after:.0f} MiB ({100 * growth:+.1f}%)")
    targets = {"aggregate_within_20pct": aggregate is not None and aggregate >= 0.8,
               "ttfc_p99_within_2x": ttfc is not None and ttfc <= 2.0,
               "zero_errors": quiet["errors"] == 0 and loud["errors"] == 0,
               "rss_growth_under_15pct": growth is not None and growth < 0.15}
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    if args.json:
        write_json(args.json, {"model": model, "clients": clients, "chars_per_request": chars, "duration_s": duration,
                               "quiet": quiet, "hostile": loud, "aggregate_ratio": aggregate, "ttfc_p99_ratio": ttfc,
                               "rss_mb_before": rss_before, "rss_mb_after": rss_after, "rss_growth": growth,
                               "targets": targets, "quick": args.quick})
    return 0


if __name__ == "__main__":
    sys.exit(main())
