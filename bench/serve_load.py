"""Serving throughput: `charnet serve` against its own engine, in one run.

    python -m bench.serve_load                       # the bundled model
    python -m bench.serve_load runs/x --json results.json
    python -m bench.serve_load --url http://127.0.0.1:8000 --model shakespeare   # the server's figures only
    python -m bench.serve_load --quick               # smoke run: 1, 2, 4 clients, short texts, a short soak

For each level (1, 8, 64 and 128 clients), alternating over --rounds so that drifts in
the machine's speed fall on both alike:
- engine alone: the same model in this process (`Engine`, as many torch threads as the
  server's engine process), the level's streams generated as one batch, each client's
  prompt, seed and length;
- engine loop: the same streams through the server's engine loop (`EngineCore`: fair
  shares, deadlines, its news taken every stream interval) in this process, with no
  process or HTTP around it: what the loop itself costs, apart from what crosses processes;
- server: that many streaming clients started together, one completion of --chars
  characters each, from `bench.load_client` in a process of its own.
Reported per level: chars/s of each (medians over the rounds), server / engine and
loop / engine; time to first character and to the response headers, p50 and p99 over
every round's streams; the server's CPU seconds per 1,000 characters (its API process,
and its engine processes); the load generator's own CPU seconds; errors.

Then a soak: --soak-clients clients streaming one completion after another for --soak
seconds: errors, and the server's memory (proportional set size summed over all its
processes, so pages the engine shares with its forkserver count once) at its start and
end.

Targets (the serving-throughput issue): server / engine >= 0.90 at 1 client and >= 0.75
at 64; p99 time to first character <= 50 ms at 64 clients; zero errors; memory growth
< 10% over a 5-minute 64-client soak. (And the first serving issue's: the aggregate at
64 clients >= 20x one client's.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.common import ROOT, free_port, machine, write_json
from bench.load_client import PROMPTS

LEVELS = (1, 8, 64, 128)
BUNDLED = ROOT / "checkpoints" / "shakespeare"


# -- the server's processes ------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """`pid` and every process under it (the API process, its forkserver, the engines)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def rss_mb(pid: int) -> float | None:
    """Memory of a process and everything under it, MiB: the sum of their proportional
    set sizes (a page shared by n of them counts 1/n in each), else of their RSS."""
    total = 0
    try:
        for p in descendants(pid):
            try:
                lines = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
                total += next(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
            except (OSError, StopIteration):
                lines = Path(f"/proc/{p}/status").read_text().splitlines()
                total += next(int(line.split()[1]) for line in lines if line.startswith("VmRSS:"))
    except OSError:
        return None
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


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


# -- the two sides ---------------------------------------------------------------------------

def level_requests(clients: int, chars: int) -> list:
    """The level's streams as engine requests: each client's prompt, seed and length."""
    from charnet.inference.request import GenerationRequest

    return [GenerationRequest.of(PROMPTS[i % len(PROMPTS)], max_chars=chars, temperature=1.0, seed=i)
            for i in range(clients)]


def engine_alone(engine, clients: int, chars: int) -> float:
    """Aggregate chars/s of the level's streams generated by `engine` as one batch."""
    batch = engine.new_batch()
    for request in level_requests(clients, chars):
        batch.add(request)
    start = time.perf_counter()
    while len(batch):
        batch.step()
    return clients * chars / (time.perf_counter() - start)


def engine_loop(engine, clients: int, chars: int) -> float:
    """Aggregate chars/s of the same streams through `EngineCore`, one streamed request
    each, run until the last ends, its news taken when due as the engine process takes
    it to send (`--stream-interval`'s default pace)."""
    from charnet.server.core.loop import EngineCore
    from charnet.server.core.protocol import Generate
    from charnet.server.settings import Settings

    core = EngineCore(engine, max_concurrency=max(clients, 1), max_n=1, timeout=3600)
    pace = Settings.model_fields["stream_interval"].default
    for i, request in enumerate(level_requests(clients, chars)):
        core.receive(Generate(job=i, groups=[(request, 1)], timeout=3600, pace=pace))
    start = time.perf_counter()
    while core.busy:
        core.iterate()
        if core.due(time.monotonic()):
            core.take()
    return clients * chars / (time.perf_counter() - start)


def load(url: str, model: str, clients: int, chars: int, headers: dict[str, str], seconds: float | None = None,
         watch=None) -> dict:
    """Run `bench.load_client` in a process of its own; what it reported. `watch` is
    called every second while it runs."""
    host, port = url.removeprefix("http://").split(":")
    spec = {"host": host, "port": int(port), "model": model, "clients": clients, "chars": chars, "headers": headers,
            "until": seconds}
    proc = subprocess.Popen([sys.executable, "-m", "bench.load_client", json.dumps(spec)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        if watch is not None:
            watch()
        try:  # reading as it waits: a pipe left unread would stall the generator's output
            out, err = proc.communicate(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            pass
    if proc.returncode != 0:
        raise SystemExit(f"the load generator failed: {err[-2000:]}")
    return json.loads(out)


def server_level(url: str, model: str, clients: int, chars: int, headers: dict[str, str],
                 server_pid: int | None) -> dict:
    """One round of the server at `clients`: its rate, every stream's figures, CPU."""
    pids = descendants(server_pid) if server_pid else []
    api = cpu_seconds(pids[:1])
    engines = cpu_seconds(pids[1:])
    seen = load(url, model, clients, chars, headers)
    pids = descendants(server_pid) if server_pid else []
    seen["api_cpu_s"] = cpu_seconds(pids[:1]) - api if server_pid else None
    seen["engine_cpu_s"] = cpu_seconds(pids[1:]) - engines if server_pid else None
    seen["chars"] = sum(s["chars"] for s in seen["streams"])
    seen["chars_per_s"] = seen["chars"] / seen["wall_s"]
    return seen


def ms(values: list[float], q: float) -> float | None:
    return round(percentile(values, q) * 1e3, 1) if values else None


def level_row(clients: int, engine_rates: list[float], loop_rates: list[float], rounds: list[dict]) -> dict:
    """The figures of one level over its rounds."""
    streams = [s for r in rounds for s in r["streams"]]
    chars = sum(r["chars"] for r in rounds)
    errors = [s["error"] for s in streams if s["error"]]
    ttfc = [s["ttfc"] for s in streams if s["ttfc"] is not None]
    heads = [s["headers"] for s in streams if s["headers"] is not None]
    server = statistics.median(r["chars_per_s"] for r in rounds)
    engine = statistics.median(engine_rates) if engine_rates else None
    loop = statistics.median(loop_rates) if loop_rates else None

    def per_kchar(key: str) -> float | None:
        values = [r[key] for r in rounds]
        return round(1000 * sum(values) / chars, 4) if chars and None not in values else None

    api, eng = per_kchar("api_cpu_s"), per_kchar("engine_cpu_s")
    return {"clients": clients, "chars": chars, "rounds": len(rounds), "chars_per_s": round(server, 1),
            "engine_chars_per_s": round(engine, 1) if engine else None,
            "server_over_engine": round(server / engine, 3) if engine else None,
            "loop_chars_per_s": round(loop, 1) if loop else None,
            "loop_over_engine": round(loop / engine, 3) if engine and loop else None,
            "per_client_chars_per_s": round(server / clients, 1),
            "ttfc_p50_ms": ms(ttfc, 50), "ttfc_p99_ms": ms(ttfc, 99),
            "headers_p50_ms": ms(heads, 50), "headers_p99_ms": ms(heads, 99),
            "server_cpu_s_per_kchar": round(api + eng, 4) if api is not None else None,
            "api_cpu_s_per_kchar": api, "engine_cpu_s_per_kchar": eng,
            "client_cpu_s": round(sum(r["cpu_s"] for r in rounds), 3),
            "client_cpu_s_per_kchar": round(1000 * sum(r["cpu_s"] for r in rounds) / chars, 4) if chars else None,
            "errors": len(errors), "error_examples": errors[:3]}


def soak(url: str, model: str, clients: int, chars: int, seconds: float, headers: dict[str, str],
         server_pid: int | None) -> dict:
    """`clients` streaming one completion after another for `seconds`: memory at the start,
    every 10 s and at the end, and errors."""
    samples: list[tuple[float, float]] = []
    start = time.monotonic()

    def sample() -> None:
        if server_pid and (not samples or time.monotonic() - start - samples[-1][0] >= 10):
            samples.append((round(time.monotonic() - start, 1), rss_mb(server_pid)))

    seen = load(url, model, clients, chars, headers, seconds, watch=sample)
    end = rss_mb(server_pid) if server_pid else None
    streams = seen["streams"]
    errors = [s["error"] for s in streams if s["error"]]
    first = samples[0][1] if samples else None
    return {"clients": clients, "duration_s": seconds, "chars": sum(s["chars"] for s in streams),
            "requests": len(streams), "errors": len(errors), "error_examples": errors[:3], "rss_mb_start": first,
            "rss_mb_end": end, "rss_growth": (end - first) / first if first and end else None,
            "rss_samples": samples + [(round(time.monotonic() - start, 1), end)], "client_cpu_s": seen["cpu_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(BUNDLED),
                        help="checkpoint to serve and measure [default: the bundled checkpoints/shakespeare]")
    parser.add_argument("--url", help="load a running server instead (its figures only: no engine alone, no CPU)")
    parser.add_argument("--model", help="model name at --url (default: the first one it lists)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="client counts, comma-separated")
    parser.add_argument("--chars", type=int, default=400, help="characters each client streams [default: 400]")
    parser.add_argument("--rounds", type=int, default=3, help="engine/server rounds per level [default: 3]")
    parser.add_argument("--soak", type=float, default=300, help="seconds of the soak, 0: none [default: 300]")
    parser.add_argument("--soak-clients", type=int, default=64, help="clients of the soak [default: 64]")
    parser.add_argument("--quick", action="store_true", help="smoke run: levels 1,2,4, 24 characters, one round, "
                        "a 3-second soak of 4 clients")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `charnet serve` option (repeat)")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.chars, args.rounds, args.soak, args.soak_clients = "1,2,4", 24, 1, 3, 4
    levels = [int(x) for x in args.levels.split(",")]
    headers = {"Authorization": f"Bearer {os.environ['CHARNET_API_KEY']}"} if os.environ.get("CHARNET_API_KEY") else {}

    engine, proc = None, None
    if args.url:
        url = args.url.rstrip("/")
    else:
        from charnet.inference.engine import Engine

        n = str(max(levels + [args.soak_clients]))
        proc, url = start_server(Path(args.checkpoint), ["--max-concurrency", n, "--max-queue", n,
                                                         "--max-chars-cap", "100000", "--max-n", "128",
                                                         *args.server_arg])
        engine = Engine.open(args.checkpoint)
    pid = proc.pid if proc else None
    try:
        model = args.model or httpx.get(f"{url}/v1/models", headers=headers, timeout=30).json()["data"][0]["id"]
        info = httpx.get(f"{url}/v1/models/{model}", headers=headers, timeout=30).json().get("charnet", {})
        load(url, model, 2, 16, headers)  # warm up
        if engine is not None:
            for clients in (1, 2):
                engine_alone(engine, clients, 16)
                engine_loop(engine, clients, 16)
        rss_before = rss_mb(pid) if pid else None
        print(f"model {model}: {info.get('cell')} {info.get('layers')}x{info.get('hidden')}, {args.chars} characters "
              f"per client, {os.cpu_count()} CPUs, {args.rounds} rounds a level", flush=True)
        print(f"{'clients':>7} {'engine':>9} {'loop':>6} {'server':>9} {'ratio':>6} {'TTFC p50':>9} {'p99':>7} "
              f"{'headers p50':>11} {'p99':>7} {'server CPU':>10} {'client CPU':>10} {'errors':>6}")
        rows = []
        for clients in levels:
            engine_rates, loop_rates, rounds = [], [], []
            for _ in range(args.rounds):
                if engine is not None:
                    engine_rates.append(engine_alone(engine, clients, args.chars))
                    loop_rates.append(engine_loop(engine, clients, args.chars))
                rounds.append(server_level(url, model, clients, args.chars, headers, pid))
            row = level_row(clients, engine_rates, loop_rates, rounds)
            row["ratio_vs_1"] = round(row["chars_per_s"] / rows[0]["chars_per_s"], 2) if rows else 1.0
            rows.append(row)
            cpu = row["server_cpu_s_per_kchar"]
            print(f"{clients:>7} {row['engine_chars_per_s'] or float('nan'):>9.0f} "
                  f"{row['loop_over_engine'] or float('nan'):>5.2f}x {row['chars_per_s']:>9.0f} "
                  f"{row['server_over_engine'] or float('nan'):>5.2f}x {row['ttfc_p50_ms']:>6} ms "
                  f"{row['ttfc_p99_ms']:>4} ms {row['headers_p50_ms']:>8} ms {row['headers_p99_ms']:>4} ms "
                  f"{'' if cpu is None else f'{cpu:.3f}':>7} s/k {row['client_cpu_s_per_kchar']:>7.3f} s/k "
                  f"{row['errors']:>6}", flush=True)
            for example in row["error_examples"]:
                print(f"        error: {example}")
        print("server CPU: seconds per 1,000 characters, API process + engine processes; client CPU: the load "
              "generator's, per 1,000 characters")
        soaked = None
        if args.soak > 0:
            soaked = soak(url, model, args.soak_clients, args.chars, args.soak, headers, pid)
            growth = soaked["rss_growth"]
            print(f"soak: {soaked['clients']} clients for {args.soak:g} s, {soaked['requests']} completions, "
                  f"{soaked['chars']:,} characters, {soaked['errors']} errors; server memory "
                  f"{soaked['rss_mb_start'] or float('nan'):.0f} -> {soaked['rss_mb_end'] or float('nan'):.0f} MiB "
                  f"({'n/a' if growth is None else f'{100 * growth:+.1f}%'})", flush=True)
        rss_after = rss_mb(pid) if pid else None
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    by = {r["clients"]: r for r in rows}
    targets = {}
    if 1 in by and by[1]["server_over_engine"] is not None:
        targets["server_over_engine_1_ge_0.90"] = by[1]["server_over_engine"] >= 0.90
    if 64 in by:
        if by[64]["server_over_engine"] is not None:
            targets["server_over_engine_64_ge_0.75"] = by[64]["server_over_engine"] >= 0.75
        targets["ttfc_p99_64_le_50ms"] = by[64]["ttfc_p99_ms"] is not None and by[64]["ttfc_p99_ms"] <= 50
        targets["aggregate_64_vs_1_ge_20x"] = by[64]["ratio_vs_1"] >= 20
    targets["zero_errors"] = all(r["errors"] == 0 for r in rows) and (soaked is None or soaked["errors"] == 0)
    if soaked is not None and soaked["rss_growth"] is not None:
        targets["soak_rss_growth_lt_10pct"] = soaked["rss_growth"] < 0.10
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    if args.json:
        write_json(args.json, {"machine": machine(), "model": model, "model_info": info, "chars_per_client": args.chars,
                               "cpus": os.cpu_count(), "rounds": args.rounds, "levels": rows, "soak": soaked,
                               "rss_mb_before": rss_before, "rss_mb_after": rss_after, "targets": targets,
                               "quick": args.quick})
    errors = any(r["errors"] for r in rows) or (soaked is not None and soaked["errors"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
