"""The per-model engine loop: continuous batching in a thread of its own.

A `Scheduler` owns one model's `Batch`. Requests (`Job`s) are admitted on the event
loop by `submit`, which answers 429 at once when the running slots and the queue are
full; the loop thread moves them from the queue into the batch as slots free up, steps
every running sequence by one character, and hands what each step produced to asyncio
with one `loop.call_soon_threadsafe` per step. Finished, cancelled and timed-out
requests leave the batch at the next step. The model never runs on the event loop.

A slot is one sequence (one choice): a request for n choices of k prompts takes n * k.

Failures stay small: an error while priming or sampling one sequence fails only its
request (the batch drops that row and carries on); an error in the batched step itself
fails the requests then in the batch, and the loop starts a fresh batch. The thread
catches everything and lives until `close`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from charnet.engine import Engine
from charnet.generation import FINISH_ERROR, CharLogprob, GenerationRequest, Sequence
from charnet.server.metrics import Metrics

log = logging.getLogger("charnet.server")


class Overloaded(Exception):
    """Every slot and the whole queue are taken."""


class ShuttingDown(Exception):
    """The scheduler no longer takes requests."""


@dataclass
class Out:
    """What one request got from one step: a piece of a choice, or the end."""

    index: int = -1
    text: str = ""
    logprobs: list[CharLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    error: tuple[int, str] | None = None
    """(status, message) when the request failed or timed out."""
    end: bool = False
    """No more events follow."""


class Job:
    """One request: groups of (request, n) sequences, and its inbox on the event loop."""

    def __init__(self, groups: list[tuple[GenerationRequest, int]], loop: asyncio.AbstractEventLoop,
                 timeout: float, model: str, metrics: Metrics) -> None:
        self.groups = groups
        self.slots = sum(n for _, n in groups)
        self.loop = loop
        self.model = model
        self.metrics = metrics
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout
        self.seqs: list[Sequence] = []  # choice order, set by the loop thread when started
        self.remaining = 0
        self.state = "new"  # new -> waiting -> running -> done (guarded by the scheduler's lock)
        # Event-loop side only:
        self.inbox: list[Out] = []
        self.wakeup = asyncio.Event()
        self.finished = False
        self.failed: tuple[int, str] | None = None
        self._first_char: float | None = None
        self._last_char: float | None = None

    # -- event-loop side ------------------------------------------------------------------

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


class Scheduler:
    """One model's engine loop thread and its admission control."""

    def __init__(self, name: str, engine: Engine, metrics: Metrics, *, max_concurrency: int, max_queue: int,
                 timeout: float) -> None:
        self.name, self.engine, self.metrics = name, engine, metrics
        self.max_concurrency, self.max_queue, self.timeout = max_concurrency, max_queue, timeout
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._cancels: list[Job] = []
        self._running_slots = 0
        self._waiting_slots = 0
        self._closed = False
        self._running_jobs = 0  # len(self._jobs), as last published by the loop thread
        self._running: dict[int, tuple[Job, int]] = {}  # sequence id -> (job, choice index); loop thread only
        self._jobs: set[Job] = set()  # running jobs; loop thread only
        self._batch = engine.new_batch()
        self._thread = threading.Thread(target=self._run, name=f"charnet-engine-{name}", daemon=True)

    # -- event-loop side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, groups: list[tuple[GenerationRequest, int]]) -> Job:
        """Queue a request, or raise `Overloaded` (429) / `ShuttingDown` at once."""
        job = Job(groups, asyncio.get_running_loop(), self.timeout, self.name, self.metrics)
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            if self._running_slots + self._waiting_slots + job.slots > self.max_concurrency + self.max_queue:
                self.metrics.rejected.labels(self.name).inc()
                raise Overloaded()
            job.state = "waiting"
            self._waiting.append(job)
            self._waiting_slots += job.slots
            self._update_gauges()
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop a request now (its client went away): a waiting one leaves the queue at
        once, a running one leaves the batch before the next step."""
        with self._cond:
            if job.state == "waiting":
                self._waiting.remove(job)
                self._waiting_slots -= job.slots
                job.state = "done"
                self._update_gauges()
            elif job.state == "running":
                self._cancels.append(job)
                self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop; requests still queued or running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _update_gauges(self) -> None:  # with the lock held
        self.metrics.waiting.labels(self.name).set(len(self._waiting))
        self.metrics.running.labels(self.name).set(self._running_jobs)

    # -- loop thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._iterate():
                    break
            except Exception:  # a bug in the loop itself: fail what is running, keep serving
                log.exception("engine loop of %s failed; failing its running requests", self.name)
                self._fail_all(500, "internal error in the generation loop")
        self._fail_all(503, "the server is shutting down")
        with self._cond:
            for job in self._waiting:
                self._post([(job, Out(error=(503, "the server is shutting down"), end=True))])
            self._waiting.clear()

    def _iterate(self) -> bool:
        """One round: take cancellations and admissions, then one step. False to stop."""
        with self._cond:
            while not self._closed and not self._cancels and not self._waiting and not len(self._batch):
                self._cond.wait()
            if self._closed:
                return False
            cancels, self._cancels = self._cancels, []
            starting = []
            while self._waiting and self._running_slots + self._waiting[0].slots <= self.max_concurrency:
                job = self._waiting.popleft()
                self._waiting_slots -= job.slots
                self._running_slots += job.slots
                job.state = "running"
                starting.append(job)
            self._timeout_waiting()
        out: list[tuple[Job, Out]] = []
        with self.engine.lock:
            for job in cancels:
                self._finish(job, None, out, cancel=True)
            self._start_all(starting, out)
            self._timeouts(out)
            if len(self._batch):
                self._step(out)
        with self._cond:
            self._running_jobs = len(self._jobs)
            self._update_gauges()
        self.metrics.batch_rows.labels(self.name).set(len(self._batch))
        self._post(out)
        return True

    def _timeout_waiting(self) -> None:  # with the lock held
        now = time.monotonic()
        expired = [job for job in self._waiting if now > job.deadline]
        for job in expired:
            self._waiting.remove(job)
            self._waiting_slots -= job.slots
            job.state = "done"
            self.metrics.timeouts.labels(self.name).inc()
            self._post([(job, Out(error=(408, self._timeout_message()), end=True))])

    def _timeout_message(self) -> str:
        return f"request exceeded the server's --request-timeout of {self.timeout:g} s"

    def _start_all(self, jobs: list[Job], out: list) -> None:
        """Start the jobs admitted this round, their prompts primed together; should
        that fail, one by one, so a failure fails only its own request."""
        if len(jobs) > 1:
            try:
                started = self._batch.add_many([group for job in jobs for group in job.groups])
            except Exception:
                log.exception("priming %d requests together on %s failed; starting them one by one",
                              len(jobs), self.name)
            else:
                for job in jobs:
                    for _ in job.groups:
                        job.seqs += started.pop(0)
                    self._started(job, out)
                return
        for job in jobs:
            self._start(job, out)

    def _start(self, job: Job, out: list) -> None:
        try:
            for seqs in self._batch.add_many(job.groups):
                job.seqs += seqs
        except Exception as e:  # a failure priming this prompt fails this request only (add_many left no rows)
            log.exception("starting a request on %s failed", self.name)
            self._release(job)
            out.append((job, Out(error=(500, f"generation failed: {type(e).__name__}"), end=True)))
            return
        self._started(job, out)

    def _started(self, job: Job, out: list) -> None:
        """Track a job whose sequences have joined the batch."""
        self._jobs.add(job)
        job.remaining = 0
        for index, seq in enumerate(job.seqs):
            if seq.finished:  # max_chars == 0: done before its first step
                out.append((job, Out(index, "", [], seq.finish_reason)))
            else:
                self._running[seq.id] = (job, index)
                job.remaining += 1
        if not job.remaining:
            self._finish(job, None, out)

    def _timeouts(self, out: list) -> None:
        now = time.monotonic()
        for job in [j for j in self._jobs if now > j.deadline]:
            self.metrics.timeouts.labels(self.name).inc()
            self._finish(job, (408, self._timeout_message()), out, cancel=True)

    def _step(self, out: list) -> None:
        try:
            pieces = self._batch.step()
        except Exception:
            log.exception("batched step of %s failed; failing the requests in it", self.name)
            for job in list(self._jobs):
                self._finish(job, (500, "internal error in the batched step"), out, cancel=True)
            self._batch = self.engine.new_batch()
            return
        for piece in pieces:
            owner = self._running.get(piece.seq.id)
            if owner is None:
                continue
            job, index = owner
            if piece.finish_reason == FINISH_ERROR:
                self.metrics.failures.labels(self.name).inc()
                self._finish(job, (500, f"generation failed: {type(piece.seq.error).__name__}"), out, cancel=True)
                continue
            if piece.text or piece.finish_reason or piece.logprobs:
                out.append((job, Out(index, piece.text, piece.logprobs, piece.finish_reason)))
            if piece.finish_reason:
                self._running.pop(piece.seq.id, None)
                job.remaining -= 1
                if not job.remaining:
                    self._finish(job, None, out)

    def _finish(self, job: Job, error: tuple[int, str] | None, out: list, cancel: bool = False) -> None:
        """End a running job: free its rows (when cancelling) and its slots; post its end."""
        if job not in self._jobs and job.state != "running":
            return
        if cancel:
            for seq in job.seqs:
                self._running.pop(seq.id, None)
                if not seq.finished:
                    self._batch.cancel(seq)
        self._jobs.discard(job)
        self._release(job)
        if error is None and cancel:
            return  # the client is gone: nobody reads its inbox
        out.append((job, Out(error=error, end=True)))

    def _release(self, job: Job) -> None:
        with self._cond:
            if job.state == "running":
                self._running_slots -= job.slots
            job.state = "done"

    def _fail_all(self, status: int, message: str) -> None:
        out: list = []
        try:
            with self.engine.lock:
                for job in list(self._jobs):
                    self._finish(job, (status, message), out, cancel=True)
        except Exception:
            log.exception("failing the requests of %s", self.name)
            self._jobs.clear()
            self._running.clear()
        self._batch = self.engine.new_batch()
        self._post(out)

    @staticmethod
    def _post(out: list[tuple[Job, Out]]) -> None:
        """Hand events to their event loops: one call per loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Out]]] = {}
        for job, event in out:
            by_loop.setdefault(job.loop, []).append((job, event))
        for loop, events in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, events)
            except RuntimeError:  # that loop has closed: its requests are gone
                pass


def _deliver_all(events: list[tuple[Job, Out]]) -> None:
    for job, event in events:
        job._deliver(event)
