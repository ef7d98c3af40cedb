"""A request's handle, shared by the event loop that answers it and the engine thread that
computes it.

The engine thread hands a `Job` immutable `Out` events, one batch per step through the
job's event loop (`loop.call_soon_threadsafe`); the event loop only ever reads those, and
what the engine set before the first of them (`choices`). Neither side reads the other's
mutable state.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from charnet.inference.generation import CharLogprob
from charnet.inference.request import GenerationRequest
from charnet.inference.scoring import Score
from charnet.server.metrics import Metrics


class Overloaded(Exception):
    """Every slot and the whole queue are taken."""


class ShuttingDown(Exception):
    """The scheduler no longer takes requests."""


@dataclass(frozen=True, kw_only=True)
class Out:
    """What one request got from one step: a piece of a choice, or the end."""

    index: int = -1
    text: str = ""
    logprobs: tuple[CharLogprob, ...] = ()
    finish_reason: str | None = None
    generated: int = 0
    """Tokens the choice has generated so far."""
    error: tuple[int, str] | None = None
    """(status, message) when the request failed or timed out."""
    score: Score | None = None
    """A score request's result."""
    end: bool = False
    """No more events follow."""


@dataclass(frozen=True, kw_only=True)
class Choice:
    """What a choice is from its start: its seed and its prompt's length in tokens."""

    seed: int
    prompt_tokens: int


class Job:
    """One generation request: groups of (request, n) sequences, and its inbox."""

    def __init__(self, groups: list[tuple[GenerationRequest, int]], loop: asyncio.AbstractEventLoop,
                 timeout: float, model: str, metrics: Metrics) -> None:
        self.groups = groups
        self.slots = sum(n for _, n in groups)
        self.loop = loop
        self.model = model
        self.metrics = metrics
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout
        self.choices: list[Choice] = []
        """Set by the engine thread when the request starts, before its first event."""
        # Event-loop side only:
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

    def __init__(self, ids: np.ndarray, top: int, unknown: int, loop: asyncio.AbstractEventLoop, timeout: float,
                 model: str, metrics: Metrics) -> None:
        super().__init__([], loop, timeout, model, metrics)
        self.ids, self.top, self.unknown = ids, top, unknown
