"""A request as the API process holds it while its model's engine process computes it.

The engine's `Out` events reach a `Job` through `charnet.server.core.client.EngineClient`,
on the event loop, a step's worth at a time; the route answering the request takes them
with `next_events`. What the engine says of a request before its first event (`choices`)
is set the same way.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from charnet.inference.request import GenerationRequest
from charnet.server.core.protocol import Choice, Out
from charnet.server.metrics import Metrics


class Job:
    """One generation request: groups of (request, n) sequences, and its inbox."""

    def __init__(self, groups: list[tuple[GenerationRequest, int]], timeout: float, model: str,
                 metrics: Metrics) -> None:
        self.id = 0
        """Its number in messages to and from the engine (set when it is sent)."""
        self.groups = groups
        self.slots = sum(n for _, n in groups)
        self.model = model
        self.metrics = metrics
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout
        self.choices: list[Choice] = []
        """Set when the engine starts the request, before its first event."""
        self.inbox: list[Out] = []
        self.wakeup = asyncio.Event()
        self.finished = False
        self.failed: tuple[int, str] | None = None
        self._first_char: float | None = None
        self._last_char: float | None = None

    def _deliver(self, out: Out) -> None:
        self.inbox.append(out)
        self.wakeup.set()

    async def next_events(self) -> list[Out]:
        """Wait for and take what has arrived since the last call (empty once finished)."""
        while not self.inbox:
            if self.finished:
                return []
            await self.wakeup.wait()
            self.wakeup.clear()
        events, self.inbox = self.inbox, []
        for event in events:
            self.finished = self.finished or event.end
            self.failed = self.failed or event.error
        return events

    def emitted(self, chars: int) -> None:
        """Record that `chars` characters went to the client now (for the latency metrics)."""
        if chars <= 0:
            return
        now = time.monotonic()
        if self._first_char is None:
            self._first_char = now
            self.metrics.ttfc.labels(self.model).observe(now - self.arrived)
        elif self._last_char is not None:
            gap = (now - self._last_char) / chars
            self.metrics.inter_char.labels(self.model).observe(gap)
        self._last_char = now
        self.metrics.chars.labels(self.model).inc(chars)

    def completed(self) -> None:
        self.metrics.e2e.labels(self.model).observe(time.monotonic() - self.arrived)


class ScoreJob(Job):
    """One /v1/score request: a text's token ids, scored from the initial state with the
    `top` most likely alternatives at each position."""

    def __init__(self, ids: np.ndarray, top: int, unknown: int, timeout: float, model: str, metrics: Metrics) -> None:
        super().__init__([], timeout, model, metrics)
        self.ids, self.top, self.unknown = ids, top, unknown
