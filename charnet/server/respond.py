"""What the routes share: the limits a request is checked against, admission (400, 429,
503), waiting for a whole result while watching for a disconnect, and streaming."""

from __future__ import annotations

import asyncio
import json
import math
from typing import AsyncIterator, Callable, Sequence as Seq

import numpy as np
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from charnet.inference.request import GenerationRequest
from charnet.server.core.client import EngineDown, Overloaded, ShuttingDown
from charnet.server.core.protocol import Out
from charnet.server.deps import Model
from charnet.server.errors import APIError
from charnet.server.job import Job, ScoreJob
from charnet.server.settings import Settings

LOGPROB_FLOOR = -9999.0
"""What an impossible character's log-probability (-inf) is reported as: JSON has no
infinity, and OpenAI-compatible servers use this value."""


def finite(value: float) -> float:
    return value if math.isfinite(value) else LOGPROB_FLOOR


def limits(settings: Settings, vocab_size: int) -> dict[str, int]:
    """The bounds `charnet.server.schemas.limit` names, for a model of `vocab_size` tokens."""
    return {"max_chars_cap": settings.max_chars_cap, "max_n": settings.max_n,
            "max_prompt_chars": settings.max_prompt_chars, "max_score_chars": settings.max_score_chars,
            "vocab_size": vocab_size}


def _admitted(model: Model, settings: Settings, enqueue: Callable[[], Job]) -> Job:
    try:
        return enqueue()
    except Overloaded:
        raise APIError(429, f"model {model.name!r} is at capacity: {settings.max_concurrency} running and "
                            f"{settings.max_queue} waiting; retry shortly", code="overloaded",
                       headers={"Retry-After": "1"}) from None
    except ShuttingDown:
        raise APIError(503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "1"}) from None
    except EngineDown:
        raise APIError(503, f"model {model.name!r} is restarting its engine; retry shortly", code="engine_restarting",
                       headers={"Retry-After": "1"}) from None


def submit(http: Request, model: Model, groups: list[tuple[GenerationRequest, int]], stream: bool) -> Job:
    """Admit the request to the model's engine process, or 400/429/503 at once. A
    `stream`'s events come about every --stream-interval; the others' at their end."""
    settings = http.app.state.charnet.settings
    slots = sum(n for _, n in groups)
    room = settings.max_concurrency + settings.max_queue
    if slots > room:
        raise APIError(400, f"n: this request needs {slots} sequences (prompts x n) but the server holds at most "
                            f"{room} (--max-concurrency + --max-queue)", param="n", code="too_many_choices")
    # Every frame costs the event loop (JSON, SSE, a socket write) as much as the engine
    # spends on a step for one row: a stream's characters gather between frames.
    pace = settings.stream_interval if stream else math.inf
    job = _admitted(model, settings, lambda: model.core.submit(groups, pace))
    job.meters.prompt_chars.inc(sum(len(r.prompt) * n for r, n in groups))
    return job


def submit_score(http: Request, model: Model, ids: np.ndarray, top: int, unknown: int) -> ScoreJob:
    """Admit a text to score, or 429/503 at once."""
    settings = http.app.state.charnet.settings
    return _admitted(model, settings, lambda: model.core.submit_score(ids, top, unknown))


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def collect(http: Request, model: Model, job: Job) -> list[Out]:
    """Every event of a non-streamed request. A client that disconnects meanwhile
    cancels the generation at once (its slot frees before the next step)."""
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(http.receive)
        if not job.finished:
            gone = True
            model.core.cancel(job)
            job.meters.disconnects.inc()
            job._deliver(Out(error=(499, "client disconnected"), end=True))

    watcher = asyncio.create_task(watch())
    events: list[Out] = []
    try:
        while batch := await job.next_events():
            events += batch
            job.emitted(sum(len(e.text) for e in batch))
    except asyncio.CancelledError:
        model.core.cancel(job)
        raise
    finally:
        watcher.cancel()
    job.completed()
    for event in events:
        if event.error is not None:
            status, message = event.error
            raise APIError(status, message, code="client_disconnected" if gone else None)
    return events


async def stream(model: Model, job: Job, render: Callable[[list[Out]], Seq[str]],
                 error: Callable[[int, str], str], done: Callable[[], str]) -> AsyncIterator[str]:
    """The response body of a streamed request (for `EventStream`): `render` turns each
    batch of events into zero or more frames, about one batch per --stream-interval (the
    first at once; `Job.pace`, set by `submit`); an error becomes an error frame. The
    last batch's frames and `done()` (the closing frames, once the request is over) go
    out as one `Last` chunk. On the client going away (`EventStream` cancels this
    generator) the generation is cancelled."""
    try:
        while True:
            batch = await job.next_events()
            failure = next((e.error for e in batch if e.error is not None), None)
            frames = list(render([e for e in batch if e.error is None and not e.end]))
            job.emitted(sum(len(e.text) for e in batch))
            if failure is not None:
                frames.append(error(*failure))
            if job.finished or failure is not None:
                job.completed()
                yield Last("".join(frames) + done())
                return
            if frames:
                yield "".join(frames)
    finally:
        if not job.finished:
            model.core.cancel(job)
            job.meters.disconnects.inc()


class Last(str):
    """A streamed body's final chunk: `EventStream` writes it with the body's end."""


class EventStream(StreamingResponse):
    """A streamed response that watches for its client going away with a plain asyncio
    task, where Starlette's StreamingResponse starts an anyio task group (under uvicorn,
    which speaks ASGI 2.3), and writes its `Last` chunk together with the end of the body.

    Why: a streamed request's share of the API process's CPU is what bounds the time to
    first character when many arrive at once. 64 clients streaming two characters each
    cost the API process 0.48-0.52 ms a request with this, 0.55-0.60 ms with Starlette's
    (two paired runs). The closing frames, [DONE] and the chunked body's end had been
    three socket writes; a loopback write costs about as much as rendering a frame."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        watching = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((streaming, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not streaming.done():  # the client went away, or the server is cancelling this request
                streaming.cancel()
                await asyncio.wait((streaming,))
        if not streaming.cancelled():
            streaming.result()  # its error, if it failed
        if self.background is not None:
            await self.background()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = False
        async for chunk in self.body_iterator:
            last = isinstance(chunk, Last)
            await send({"type": "http.response.body", "body": chunk.encode(self.charset), "more_body": not last})
        if not last:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


INLINE_ENTRIES = 4096
"""Answers of at most this many token entries are serialised on the event loop: less
work than a worker thread's round trip (a one-line completion takes tens of
microseconds)."""


async def json_response(build: Callable[[], dict], entries: int) -> Response:
    """A JSON response of at most `entries` token entries (`response_entries`): a large
    answer (every character's alternatives) is built and serialised in a worker thread,
    so it does not hold up the event loop; written as it is built, not validated again
    field by field."""
    def serialise() -> str:
        return json.dumps(build(), ensure_ascii=False, separators=(",", ":"))

    payload = serialise() if entries <= INLINE_ENTRIES else await asyncio.to_thread(serialise)
    return Response(payload.encode("utf-8"), media_type="application/json")


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no caching, no proxy buffering


def sse(data: dict | str) -> str:
    """One Server-Sent Events frame."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"
