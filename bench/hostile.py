"""Isolation under attack: well-behaved streaming clients beside a hostile one, in one run.

    python -m bench.hostile                        # the bundled model, charnet serve's defaults
    python -m bench.hostile --duration 60 --clients 32 --json results.json
    python -m bench.hostile --quick                # smoke run: 4 clients, 8 s phases

Quiet phases (the clients alone) and hostile phases (the clients and a hostile client)
alternate against one `charnet serve`, --duration seconds of each in all (cut into
--rounds pairs, so slow drifts in the machine's speed fall on both alike). Each well-behaved client streams one
completion after another (`--chars` characters, its own seeds) and records its time to
first character (`bench.load_client`); the hostile client cycles through every request the isolation issue
saw hurt the service (huge numbers, 100k prompts, long stops, amplifying logprobs, n=64
floods, lone surrogates, random methods, long scores), each as first seen and as the
largest variant the server's limits let through, each dropped after `HOLD` seconds. The clients
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
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, write_json
from bench.lean_http import Connection
from bench.load_client import Tally, client
from bench.serve_load import percentile, rss_mb, start_server

BUNDLED = ROOT / "checkpoints" / "shakespeare"
SURROGATE = "\ud800"


HOLD = 5.0
"""Seconds the hostile client waits for one request before it drops the connection."""


def attacks(model: str) -> list[tuple[str, dict]]:
    """(name, what to send) for every hostile request: `body` goes to `path` (a POST) or
    `method` is a random one; `repeat` sends that many at once; each is read for at most
    `hold` seconds and then dropped, as a client that gives up would."""
    long_stops = ["x" * 4000] * 15
    limit_stops = ["".join(random.Random(i).choice("qzxj") for _ in range(256)) for i in range(16)]
    text = (ROOT / "corpora" / "shakespeare.txt").read_text(encoding="utf-8")
    c = {"model": model}
    return [
        ("top_k 2^64 on /v1/generate", {"path": "/v1/generate", "body": {**c, "length": 1, "top_k": 2 ** 64}}),
        ("top_k 2^63 on /v1/completions", {"body": {**c, "max_tokens": 1, "top_k": 2 ** 63}}),
        ("100k-character prompt", {"body": {**c, "prompt": text[:100_000], "max_tokens": 20}}),
        ("30k-character prompt, dropped", {"body": {**c, "prompt": text[:30_000], "max_tokens": 20, "stream": True}}),
        ("15 stops of 4,000 characters, n=4", {"body": {**c, "stop": long_stops, "n": 4, "max_tokens": 4000}}),
        ("16 stops of 256 characters, n=4", {"body": {**c, "stop": limit_stops, "n": 4, "max_tokens": 1000,
                                                      "stream": True}}),
        ("logprobs=20, n=64, 4,096 tokens", {"body": {**c, "logprobs": 20, "n": 64, "max_tokens": 4096}}),
        ("logprobs=20, n=16, 4,096 tokens", {"body": {**c, "logprobs": 20, "n": 16, "max_tokens": 4096}}),
        ("logprobs=20, 4,096 tokens", {"body": {**c, "logprobs": 20, "max_tokens": 4096, "stream": True}}),
        ("echo + logprobs, n=64, 100k prompt", {"body": {**c, "prompt": text[:100_000], "echo": True,
                                                         "logprobs": 5, "n": 64, "max_tokens": 1}}),
        ("five n=64 floods", {"body": {**c, "n": 64, "max_tokens": 4096, "stream": True}, "repeat": 5}),
        ("five n=16 floods", {"body": {**c, "n": 16, "max_tokens": 4096, "stream": True}, "repeat": 5}),
        ("lone surrogate, echoed", {"body": {**c, "prompt": SURROGATE, "echo": True, "max_tokens": 5}}),
        ("lone surrogate, streamed", {"body": {**c, "prompt": "a" + SURROGATE, "stream": True}}),
        ("lone surrogate in a score", {"path": "/v1/score", "body": {**c, "text": "ab" + SURROGATE}}),
        ("random methods and paths", {"method": "random", "repeat": 50}),
        ("four 20k-character scores, top=20", {"path": "/v1/score", "body": {**c, "text": text[:20_000], "top": 20},
                                               "repeat": 4}),
        ("four 20k-character scores, top=12", {"path": "/v1/score", "body": {**c, "text": text[:20_000], "top": 12},
                                               "repeat": 4}),
        ("invalid JSON", {"body": b'{"model": "', "repeat": 3}),
    ]


async def _one(host: str, port: int, spec: dict, rng: random.Random) -> str:
    """Send one hostile request; the status it got, "dropped" if it gave up waiting after
    `HOLD` seconds, or what went wrong."""
    conn = Connection(host, port)
    try:
        if spec.get("method") == "random":
            method = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(3, 9)))
            path = "/" + "/".join(str(rng.randint(0, 10 ** 9)) for _ in range(rng.randint(1, 3)))
            request = conn.request(method, rng.choice([path, "/v1/completions", "/metrics"]))
        else:
            request = conn.request("POST", spec.get("path", "/v1/completions"), spec["body"])
        return str((await asyncio.wait_for(request, HOLD)).status)
    except asyncio.TimeoutError:
        return "dropped"
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        return type(e).__name__
    finally:
        await conn.close()


async def hostile(host: str, port: int, specs: list[tuple[str, dict]], until: float, seen: dict) -> None:
    """Cycle through `specs` until `until`, from where the last phase left off, recording
    what each request got."""
    rng = random.Random(len(seen))
    while time.perf_counter() < until:
        name, spec = specs[seen.setdefault("next", 0) % len(specs)]
        got = await asyncio.gather(*(_one(host, port, spec, rng) for _ in range(spec.get("repeat", 1))))
        seen["next"] += 1
        for status in got:
            seen.setdefault(name, {}).setdefault(status, 0)
            seen[name][status] += 1


@dataclass
class Phases:
    """What the well-behaved clients saw over every phase of one kind."""

    tally: Tally = field(default_factory=Tally)
    wall: float = 0.0


async def phase(host: str, port: int, model: str, clients: int, chars: int, duration: float, stats: Phases,
                specs: list | None = None, seen: dict | None = None) -> None:
    """`clients` streaming for `duration` seconds (beside the hostile client, given its
    `specs`), adding to `stats`."""
    start = time.perf_counter()
    until = start + duration
    tasks = [asyncio.create_task(client(host, port, model, i, chars, stats.tally, until)) for i in range(clients)]
    bad = asyncio.create_task(hostile(host, port, specs, until, seen)) if specs else None
    await asyncio.gather(*tasks)
    stats.wall += time.perf_counter() - start
    if bad is not None:
        bad.cancel()  # an attack still in flight is abandoned: the server sees a disconnect
        await asyncio.gather(bad, return_exceptions=True)


def summary(stats: Phases) -> dict:
    ttfc, wall, errors = [s.ttfc for s in stats.tally.streams if s.ttfc is not None], stats.wall, stats.tally.errors
    return {"wall_s": round(wall, 2), "chars": stats.tally.chars, "chars_per_s": round(stats.tally.chars / wall, 1),
            "requests": len(ttfc), "ttfc_p50_ms": round(statistics.median(ttfc) * 1e3, 1) if ttfc else None,
            "ttfc_p99_ms": round(percentile(ttfc, 99) * 1e3, 1) if ttfc else None,
            "errors": len(errors), "error_examples": errors[:3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(BUNDLED), help="checkpoint to serve [default: the "
                        "bundled checkpoints/shakespeare]")
    parser.add_argument("--clients", type=int, default=32, help="well-behaved streaming clients [default: 32]")
    parser.add_argument("--chars", type=int, default=200, help="characters per completion [default: 200]")
    parser.add_argument("--duration", type=float, default=60, help="seconds of each kind of phase, in all "
                        "[default: 60]")
    parser.add_argument("--rounds", type=int, default=4, help="quiet-hostile pairs the time is cut into [default: 4]")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 clients, 8 s phases, 50 characters")
    parser.add_argument("--only", help="send only the hostile requests whose name holds this text (analysis)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    clients, duration, chars, rounds = (4, 8.0, 50, 1) if args.quick else (args.clients, args.duration, args.chars,
                                                                           args.rounds)

    proc, url = start_server(Path(args.checkpoint), [])  # charnet serve's defaults
    host, port = url.removeprefix("http://").split(":")
    port = int(port)
    model = Path(args.checkpoint).name
    specs = [(name, spec) for name, spec in attacks(model) if args.only is None or args.only in name]
    quiet_stats, loud_stats, seen = Phases(), Phases(), {}
    try:
        asyncio.run(phase(host, port, model, 2, 16, 1.0, Phases()))  # warm up
        rss_before = rss_mb(proc.pid)
        print(f"{clients} clients streaming {chars} characters each; quiet and hostile phases alternate, "
              f"{rounds} of {duration / rounds:g} s each", flush=True)
        for _ in range(rounds):  # alternating, so drifts in the machine's speed fall on both alike
            asyncio.run(phase(host, port, model, clients, chars, duration / rounds, quiet_stats))
            asyncio.run(phase(host, port, model, clients, chars, duration / rounds, loud_stats, specs, seen))
        rss_after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
    quiet, loud = summary(quiet_stats), summary(loud_stats)
    seen.pop("next", None)
    loud["attacks"] = seen
    for name, phase_figures in (("quiet", quiet), ("hostile", loud)):
        print(f"{name + ':':<8} {phase_figures['chars_per_s']:>8.0f} chars/s, TTFC p50 {phase_figures['ttfc_p50_ms']} "
              f"ms, p99 {phase_figures['ttfc_p99_ms']} ms, {phase_figures['errors']} errors")
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
                               "rounds": rounds, "hold_s": HOLD, "rss_mb_before": rss_before, "rss_mb_after": rss_after,
                               "rss_growth": growth,
                               "targets": targets, "quick": args.quick, "only": args.only})
    return 0


if __name__ == "__main__":
    sys.exit(main())
