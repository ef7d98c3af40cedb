"""A request as the API process holds it while its model's engine process computes it.

The engine's `Out` events reach a `Job` through `charnet.server.core.client.EngineClient`,
on the event loop, a message's worth at a time; the route answering the request takes
them with `next_events`. What the engine says of a request before its first event
(`choices`) is set the same way.

A delivery wakes the route only when it is due (`pace`): its first events, its end, and
otherwise once most of `pace` (`DUE_EARLY`) has passed since it last took events (a
stream's next frame). Between, events gather in the inbox. The engine paces its messages
the same way, so a stream's frames follow them. So the API process's work on a stream comes
right after the engine's message that made it due, while the engine runs the serial part
of its next round, rather than on timers at scattered moments that take a core from the
engine in the middle of its matrix products.
"""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace

import numpy as np

from charnet.inference.request import GenerationRequest
from charnet.server.core.protocol import Choice, Out


DUE_EARLY = 0.75
"""A delivery wakes the route once this share of `Job.pace` has passed since it last took
events."""


class Job:
    """One generation request: groups of (request, n) sequences, and its inbox."""

    def __init__(self, groups: list[tuple[GenerationRequest, int]], timeout: float, meters: SimpleNamespace,
                 pace: float = math.inf) -> None:
        """`meters`: its model's metrics (`Metrics.of`); `pace`: see below."""
        self.id = 0
        """Its number in messages to and from the engine (set when it is sent)."""
        self.groups = groups
        self.slots = sum(n for _, n in groups)
        self.meters = meters
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout
        self.choices: list[Choice] = []
        """Set when the engine starts the request, before its first event."""
        self.inbox: list[Out] = []
        self.wakeup = asyncio.Event()
        self.pace = pace
        """Seconds between two wakeups of the route (at least `DUE_EARLY` of it), but for
        the first and the end (0: every delivery; a stream's --stream-interval; inf: the
        first and the end)."""
        self._taken: float | None = None  # when the route last took events
        self.finished = False
        self.failed: tuple[int, str] | None = None
        self._first_char: float | None = None
        self._last_char: float | None = None

    def _deliver(self, out: Out) -> None:
        self.inbox.append(out)
        # A frame is due a little early rather than a whole message late: the engine
        # sends a stream's characters every `pace` by its own clock (`EngineCore.window`).
        if out.end or self._taken is None or time.monotonic() - self._taken >= DUE_EARLY * self.pace:
            self.wakeup.set()

    async def next_events(self) -> list[Out]:
        """Wait until a delivery is due, and take what has arrived since the last call
        (empty once finished)."""
        while not self.wakeup.is_set():
            if self.finished:
                return []
            await self.wakeup.wait()
        self.wakeup.clear()
        self._taken = time.monotonic()
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
            self.meters.ttfc.observe(now - self.arrived)
        elif self._last_char is not None:
            self.meters.inter_char.observe((now - self._last_char) / chars)
        self._last_char = now
        self.meters.chars.inc(chars)

    def completed(self) -> None:
        self.meters.e2e.observe(time.monotonic() - self.arrived)


class ScoreJob(Job):
    """One /v1/score request: a text's token ids, scored from the initial state with the
    `top` most likely alternatives at each position."""

    def __init__(self, ids: np.ndarray, top: int, unknown: int, timeout: float, meters: SimpleNamespace) -> None:
        super().__init__([], timeout, meters)
        self.ids, self.top, self.unknown = ids, top, unknown
