"""The per-model engine loop: continuous batching in a thread of its own.

A `Scheduler` owns one model's `Batch`. Requests (`Job`s) are admitted on the event loop
by `submit`, which answers 429 at once when the model holds as many sequences as its
running slots and queue allow; the loop thread takes them in, and every round it

1. ends cancelled requests and those past their deadline (`--request-timeout` counts from
   arrival: queueing, priming and generation alike);
2. shares the batch's rows among the requests fairly (`charnet.server.fairness`), each
   request at most `--max-n` at once: a request over its share has sequences suspended
   (their state kept, to resume exactly), one under it has sequences admitted;
3. advances every row by one token: sampling rows write a character, priming rows feed
   the next character of their prompt, so a long prompt primes a token a step beside
   everyone else's generation;
4. gives at most `SCORE_SHARE` of its time to scoring texts for /v1/score, a window of
   `SCORE_WINDOW` characters at a time (all of it when nothing generates);

and hands what the round produced to asyncio, one `loop.call_soon_threadsafe` per event
loop. The model never runs on the event loop.

Failures stay small: an error while starting or sampling one sequence fails only its
request (the batch drops that row and carries on); an error in the batched kernel step
itself fails the requests then in the batch, and the loop starts a fresh batch. The
thread catches everything and lives until `close`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

import numpy as np

from charnet.inference.engine import Engine
from charnet.errors import ConfigError
from charnet.inference.generation import FINISH_ERROR, Sequence
from charnet.inference.request import GenerationRequest
from charnet.inference.scoring import Scorer
from charnet.server.fairness import water_fill
from charnet.server.job import Choice, Job, Out, Overloaded, ScoreJob, ShuttingDown
from charnet.server.metrics import Metrics

log = logging.getLogger("charnet.server")

SCORE_WINDOW = 64
"""Characters /v1/score scores between two looks at the batch."""

SCORE_SHARE = 0.1
"""Most of the loop's time scoring takes while anything generates."""


def _failure(error: BaseException) -> tuple[int, str]:
    """What a request that failed in the engine answers: 400 when its own settings cannot
    be honoured (a value the model cannot take, a constraint its vocabulary cannot finish),
    else 500 without the details."""
    if isinstance(error, ConfigError):
        return 400, str(error)
    return 500, f"generation failed: {type(error).__name__}"


class Scheduler:
    """One model's engine loop thread and its admission control."""

    def __init__(self, name: str, engine: Engine, metrics: Metrics, *, max_concurrency: int, max_queue: int,
                 max_n: int, timeout: float) -> None:
        self.name, self.engine, self.metrics = name, engine, metrics
        self.max_concurrency, self.max_queue, self.max_n, self.timeout = max_concurrency, max_queue, max_n, timeout
        self._cond = threading.Condition()
        self._arrivals: deque[Job] = deque()
        self._cancels: list[Job] = []
        self._held = 0  # sequences of every request not yet done (admission)
        self._scoring = 0  # score requests not yet done
        self._closed = False
        # Loop thread only:
        self._jobs: list[Job] = []  # generating, in order of arrival
        self._scores: deque[ScoreJob] = deque()
        self._scorers: dict[ScoreJob, Scorer] = {}
        self._owner: dict[int, tuple[Job, int]] = {}  # sequence id -> (job, choice index)
        self._seqs: dict[Job, list[Sequence]] = {}
        self._score_debt = 0.0  # seconds the batch is owed before the next score window
        self._batch = engine.new_batch(auto_admit=False)
        self._thread = threading.Thread(target=self._run, name=f"charnet-engine-{name}", daemon=True)

    # -- event-loop side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, groups: list[tuple[GenerationRequest, int]]) -> Job:
        """Queue a generation, or raise `Overloaded` (429) / `ShuttingDown` at once."""
        job = Job(groups, asyncio.get_running_loop(), self.timeout, self.name, self.metrics)
        with self._cond:
            self._check_open()
            if self._held + job.slots > self.max_concurrency + self.max_queue:
                self.metrics.rejected.labels(self.name).inc()
                raise Overloaded()
            self._held += job.slots
            self._arrive(job)
        return job

    def submit_score(self, ids: np.ndarray, top: int, unknown: int) -> ScoreJob:
        """Queue a text to score, or raise `Overloaded` when --max-concurrency texts are
        being scored already."""
        job = ScoreJob(ids, top, unknown, asyncio.get_running_loop(), self.timeout, self.name, self.metrics)
        with self._cond:
            self._check_open()
            if self._scoring >= self.max_concurrency:
                self.metrics.rejected.labels(self.name).inc()
                raise Overloaded()
            self._scoring += 1
            self._arrive(job)
        return job

    def _check_open(self) -> None:  # with the lock held
        if self._closed:
            raise ShuttingDown()

    def _arrive(self, job: Job) -> None:  # with the lock held
        self._arrivals.append(job)
        self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a request now (its client went away): it leaves before the next step."""
        with self._cond:
            if job in self._arrivals:
                self._arrivals.remove(job)
                self._release(job)
            else:
                self._cancels.append(job)
                self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop; requests still queued or running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _release(self, job: Job) -> None:  # with the lock held
        if isinstance(job, ScoreJob):
            self._scoring -= 1
        else:
            self._held -= job.slots

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
            waiting, self._arrivals = list(self._arrivals), deque()
            for job in waiting:
                self._release(job)
        self._post([(job, Out(error=(503, "the server is shutting down"), end=True)) for job in waiting])

    def _iterate(self) -> bool:
        """One round: cancellations, arrivals, timeouts, rows, one step. False to stop."""
        with self._cond:
            while not (self._closed or self._cancels or self._arrivals or self._jobs or self._scores):
                self._cond.wait()
            if self._closed:
                return False
            cancels, self._cancels = self._cancels, []
            arrivals, self._arrivals = list(self._arrivals), deque()
        out: list[tuple[Job, Out]] = []
        with self.engine.lock:
            for job in cancels:
                self._end(job, None, out)
            for job in arrivals:
                self._start(job, out)
            self._timeouts(out)
            self._allocate(out)
            stepped = self._step(out) if self._batch.rows else 0.0
            self._score_turn(stepped, out)
        running = sum(1 for job in self._jobs if any(s.row >= 0 for s in self._seqs[job]))
        self.metrics.running.labels(self.name).set(running + len(self._scores))
        self.metrics.waiting.labels(self.name).set(len(self._jobs) - running)
        self.metrics.batch_rows.labels(self.name).set(self._batch.rows)
        self._post(out)
        return True

    def _start(self, job: Job, out: list) -> None:
        if isinstance(job, ScoreJob):
            self._scorers[job] = Scorer(self.engine.model, job.ids, self.engine.device, unknown=job.unknown,
                                        top=job.top)
            self._scores.append(job)
            return
        seqs: list[Sequence] = []
        try:
            for request, n in job.groups:
                seqs += self._batch.add(request, n)
        except Exception as e:  # starting this request failed: only it fails (nothing of it has a row yet)
            for seq in seqs:
                self._batch.cancel(seq)
            error = _failure(e)
            if error[0] == 500:
                log.exception("starting a request on %s failed", self.name)
            self._finish(job, error, out)
            return
        job.choices = [Choice(seed=s.seed, prompt_tokens=s.prompt_tokens) for s in seqs]
        self._seqs[job] = seqs
        self._jobs.append(job)
        for index, seq in enumerate(seqs):
            if seq.finished:  # max_chars == 0: done before its first step
                out.append((job, Out(index=index, finish_reason=seq.finish_reason)))
            else:
                self._owner[seq.id] = (job, index)
        if all(s.finished for s in seqs):
            self._end(job, None, out, done=True)

    def _timeouts(self, out: list) -> None:
        now = time.monotonic()
        message = f"request exceeded the server's --request-timeout of {self.timeout:g} s"
        for job in [j for j in [*self._jobs, *self._scores] if now > j.deadline]:
            self.metrics.timeouts.labels(self.name).inc()
            self._end(job, (408, message), out)

    def _allocate(self, out: list) -> None:
        """Suspend and admit sequences so that each request holds its fair share of the
        rows."""
        batch = self._batch
        jobs = list(self._jobs)
        seqs = [self._seqs[j] for j in jobs]
        held = [[s for s in group if s.row >= 0] for group in seqs]
        ready = [[s for s in group if s.ready] for group in seqs]
        demands = [min(self.max_n, len(h) + len(r)) for h, r in zip(held, ready)]
        alloc = water_fill(demands, self.max_concurrency)
        for rows, share in zip(held, alloc):
            for seq in rows[share:]:  # over its share: the latest choices wait
                batch.suspend(seq)
        for job, rows, waiting, share in zip(jobs, held, ready, alloc):
            try:
                for seq in waiting[:max(0, share - len(rows))]:
                    batch.admit(seq)
            except Exception as e:  # e.g. the prompt cache failing: this request only
                log.exception("starting a sequence on %s failed", self.name)
                self._end(job, (500, f"generation failed: {type(e).__name__}"), out)

    def _step(self, out: list) -> float:
        """One batched step; returns the seconds it took."""
        started = time.perf_counter()
        try:
            pieces = self._batch.step()
        except Exception:
            log.exception("batched step of %s failed; failing the requests in it", self.name)
            for job in list(self._jobs):
                self._end(job, (500, "internal error in the batched step"), out)
            self._batch = self.engine.new_batch(auto_admit=False)
            return time.perf_counter() - started
        finished: dict[Job, None] = {}  # in order; ended once every piece of the step is out
        for piece in pieces:
            owner = self._owner.get(piece.seq.id)
            if owner is None:
                continue
            job, index = owner
            if piece.finish_reason == FINISH_ERROR:
                error = _failure(piece.seq.error)
                if error[0] == 500:
                    self.metrics.failures.labels(self.name).inc()
                self._end(job, error, out)
                continue
            if piece.text or piece.finish_reason or piece.logprobs:
                out.append((job, Out(index=index, text=piece.text, logprobs=tuple(piece.logprobs),
                                     finish_reason=piece.finish_reason, generated=piece.seq.generated)))
            if piece.finish_reason:
                del self._owner[piece.seq.id]
                if all(s.finished for s in self._seqs[job]):
                    finished[job] = None
        for job in finished:
            self._end(job, None, out, done=True)
        return time.perf_counter() - started

    def _score_turn(self, stepped: float, out: list) -> None:
        """Score one window of the next text, if scoring has not had its share."""
        if not self._scores:
            self._score_debt = 0.0
            return
        if self._batch.rows and self._score_debt > 0:
            self._score_debt -= stepped
            return
        job = self._scores[0]
        scorer = self._scorers[job]
        started = time.perf_counter()
        try:
            scorer.advance(SCORE_WINDOW)
        except Exception as e:
            log.exception("scoring a text on %s failed", self.name)
            self._end(job, (500, f"scoring failed: {type(e).__name__}"), out)
            return
        spent = time.perf_counter() - started
        self._score_debt = spent * (1 - SCORE_SHARE) / SCORE_SHARE if self._batch.rows else 0.0
        if scorer.done:
            out.append((job, Out(score=scorer.result())))
            self._end(job, None, out, done=True)
        else:
            self._scores.rotate(-1)  # texts take turns

    def _end(self, job: Job, error: tuple[int, str] | None, out: list, done: bool = False) -> None:
        """End a job: cancelled by its client (no error, not done: nobody reads its
        inbox), failed or timed out (`error`), or `done`; free what it held."""
        if isinstance(job, ScoreJob):
            if job not in self._scorers:
                return
            del self._scorers[job]
            self._scores.remove(job)
        else:
            if job not in self._seqs:
                return
            for seq in self._seqs.pop(job):
                self._owner.pop(seq.id, None)
                self._batch.cancel(seq)
            self._jobs.remove(job)
        self._finish(job, error, out, post=error is not None or done)

    def _finish(self, job: Job, error: tuple[int, str] | None, out: list, post: bool = True) -> None:
        with self._cond:
            self._release(job)
        if post:
            out.append((job, Out(error=error, end=True)))

    def _fail_all(self, status: int, message: str) -> None:
        out: list = []
        try:
            with self.engine.lock:
                for job in [*self._jobs, *self._scores]:
                    self._end(job, (status, message), out)
        except Exception:
            log.exception("failing the requests of %s", self.name)
            self._jobs.clear()
            self._seqs.clear()
            self._scores.clear()
            self._scorers.clear()
            self._owner.clear()
        self._batch = self.engine.new_batch(auto_admit=False)
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
