"""Streaming clients for load tests, cheap enough not to be what they measure.

A load generator on the server's own cores competes with it for CPU, and every
millisecond it spends is counted as the server's latency. So each client keeps one
keep-alive connection of `bench.lean_http` (raw asyncio HTTP/1.1, parsing only the
status line, the framing and each event's JSON), on uvloop where it is installed.

`bench.serve_load` runs them in a process of their own:

    python -m bench.load_client '{"host": ..., "port": ..., "model": ..., "clients": 64, "chars": 400}'

prints one JSON object: every request's figures, and the CPU seconds this process spent.
With ``"until": SECONDS`` each client streams one completion after another for that
long (a soak); otherwise one each, all started together. `bench.hostile` runs the same
clients in its own process, beside its hostile ones.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field

from bench.lean_http import Connection

PROMPTS = ("ROMEO:\n", "JULIET:\n", "First Citizen:\n", "KING HENRY IV:\n")


@dataclass
class Stream:
    """One streamed completion as its client saw it."""

    chars: int = 0
    ttfc: float | None = None
    """Seconds from sending the request to its first character."""
    headers: float | None = None
    """Seconds from sending the request to its response's headers."""
    error: str | None = None


@dataclass
class Tally:
    """Every stream of a run."""

    streams: list[Stream] = field(default_factory=list)

    @property
    def chars(self) -> int:
        return sum(s.chars for s in self.streams)

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.streams if s.error is not None]


def completion(model: str, index: int, chars: int, seed: int) -> dict:
    """The request client `index` sends: its prompt, `chars` characters at temperature 1."""
    return {"model": model, "prompt": PROMPTS[index % len(PROMPTS)], "max_tokens": chars, "temperature": 1.0,
            "seed": seed, "stream": True}


async def stream(conn: Connection, body: dict) -> Stream:
    """Stream `body` over `conn` to the end: what arrived, when, and what went wrong."""
    out = Stream()
    start = time.perf_counter()
    finished = False
    try:
        async for event in conn.events("/v1/completions", body):
            if out.headers is None and conn.response is not None:
                out.headers = conn.response.at - start
            if event == "[DONE]":
                continue
            if "status" in event or "error" in event:
                raise RuntimeError(str(event)[:200])
            choice = event["choices"][0]
            if choice["text"] and out.ttfc is None:
                out.ttfc = time.perf_counter() - start
            out.chars += len(choice["text"])
            finished = finished or choice["finish_reason"] is not None
        if not finished or out.chars != body["max_tokens"]:
            raise RuntimeError(f"incomplete: {out.chars} of {body['max_tokens']} characters")
    except (OSError, RuntimeError, ValueError) as e:
        out.error = f"{type(e).__name__}: {e}"
        await conn.close()
    return out


async def client(host: str, port: int, model: str, index: int, chars: int, tally: Tally,
                 until: float | None = None, headers: dict[str, str] | None = None) -> None:
    """One client: one completion, or (with `until`, a time.perf_counter value) one after
    another until then, each with a seed of its own."""
    conn = Connection(host, port, headers)
    try:
        for k in range(1 if until is None else sys.maxsize):
            if until is not None and time.perf_counter() >= until:
                break
            tally.streams.append(await stream(conn, completion(model, index, chars, index * 100_000 + k)))
    finally:
        await conn.close()


async def run(host: str, port: int, model: str, clients: int, chars: int, seconds: float | None = None,
              headers: dict[str, str] | None = None) -> tuple[Tally, float]:
    """`clients` clients started together: (what they saw, wall seconds)."""
    tally = Tally()
    start = time.perf_counter()
    until = start + seconds if seconds is not None else None
    await asyncio.gather(*(client(host, port, model, i, chars, tally, until, headers) for i in range(clients)))
    return tally, time.perf_counter() - start


def cpu_seconds() -> float:
    """User and system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        import uvloop  # what an asyncio program would use to go fast, where it is installed
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    before = cpu_seconds()
    tally, wall = runner(run(spec["host"], spec["port"], spec["model"], spec["clients"], spec["chars"],
                             spec.get("until"), spec.get("headers")))
    print(json.dumps({"wall_s": wall, "cpu_s": cpu_seconds() - before, "streams": [asdict(s) for s in tally.streams]}))


if __name__ == "__main__":
    main()
