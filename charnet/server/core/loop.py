"""One model's engine loop: continuous batching, driven by commands, one `Step` a round.

An `EngineCore` owns one model's `Batch`. It takes commands (`receive`), and every
round (`iterate`)

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

and adds what the round produced to its `News` (a choice's characters from consecutive
rounds joined), saying whether any of it is `urgent` (a request started, wrote its first
characters, ended or failed). `take` turns the news into one `Step` message, every row's
output at once; `due` says when: at once when urgent, else once `window` has passed.
Shares, counts and deadlines are looked at again only when the batch's membership
changed (`Batch.revision`) or the earliest deadline has passed: a round of 64 streams
whose requests all carry on does no work per request beyond the step and appending each
row's characters to its event.

Failures stay small: an error while starting or sampling one sequence fails only its
request (the batch drops that row and carries on); an error in the batched kernel step
itself fails the requests then in the batch, and the loop starts a fresh batch; a bug in
the loop itself fails what is running, and the loop carries on.

Admission (429) is the API process's (`charnet.server.core.client`): it knows what it
sent, and answers at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

from charnet.errors import ConfigError
from charnet.inference.engine import Engine
from charnet.inference.generation import FINISH_ERROR, Sequence
from charnet.inference.scoring import Scorer
from charnet.server.core.news import News
from charnet.server.core.protocol import Cancel, Choice, Command, Generate, Out, ScoreText, Shutdown, Stats, Step
from charnet.server.fairness import water_fill

log = logging.getLogger("charnet.server")

SCORE_WINDOW = 64
"""Characters /v1/score scores between two looks at the batch."""

SCORE_SHARE = 0.1
"""Most of the loop's time scoring takes while anything generates."""

WINDOW_S = (0.002, 0.1)
"""Least and most seconds a round's output may wait to go out with the next rounds'
(`EngineCore.window`)."""


def failure(error: BaseException) -> tuple[int, str]:
    """What a request that failed in the engine answers: 400 when its own settings cannot
    be honoured (a value the model cannot take, a constraint its vocabulary cannot finish),
    else 500 without the details."""
    if isinstance(error, ConfigError):
        return 400, str(error)
    return 500, f"generation failed: {type(error).__name__}"


@dataclass(eq=False)
class _Generation:
    id: int
    groups: list
    deadline: float
    pace: float
    seqs: list[Sequence] = field(default_factory=list)
    spoke: bool = False
    """Whether its first characters have gone out."""


@dataclass(eq=False)
class _Scoring:
    id: int
    scorer: Scorer
    deadline: float


class EngineCore:
    """One model's batch and the requests in it; single-threaded."""

    def __init__(self, engine: Engine, *, max_concurrency: int, max_n: int, timeout: float) -> None:
        """`timeout`: the server's --request-timeout, for the message of a request past it
        (each request brings its own deadline)."""
        self.engine, self.max_concurrency, self.max_n, self.timeout = engine, max_concurrency, max_n, timeout
        self.stopping = False
        self._arrivals: deque[_Generation | _Scoring] = deque()
        self._cancels: set[int] = set()
        self._jobs: list[_Generation] = []  # generating, in order of arrival
        self._scores: deque[_Scoring] = deque()
        self._owner: dict[int, tuple[_Generation, int]] = {}  # sequence id -> (request, choice index)
        self._score_debt = 0.0  # seconds the batch is owed before the next score window
        self._batch = engine.new_batch(auto_admit=False)
        self.news = News()
        """What the rounds since the last `take` produced."""
        self._taken = -math.inf  # when `take` last returned a Step
        self._stats = Stats()
        self._measured: tuple = ()  # what `_stats` was measured at (`_measure`)
        self._seen = -1  # the batch revision the shares and counts below are for
        self._running = self._waiting = 0
        self._deadline = math.inf  # the earliest of every request's
        self.urgent = False
        """Whether the news has something that should not wait (see the module
        docstring)."""
        self.window = WINDOW_S[0]
        """How long output that is not urgent may gather before it goes out: the
        shortest `Generate.pace` in the batch, within `WINDOW_S`. Each message wakes the
        API process on the other core, and each wakeup there stalls this process's
        threads in the middle of a product: a message a step would wake it every quarter
        millisecond for one stream, whose response takes characters every 20 ms. One
        streaming client got 0.71-0.86x of the engine alone's speed with messages every
        2 ms, 0.81-0.88x with them at its pace (four runs each, 2 cores)."""

    @property
    def busy(self) -> bool:
        """Whether a round would do anything."""
        return bool(self._cancels or self._arrivals or self._jobs or self._scores)

    def receive(self, command: Command) -> None:
        now = time.monotonic()
        if isinstance(command, Generate):
            self._arrivals.append(_Generation(command.job, command.groups, now + command.timeout, command.pace))
        elif isinstance(command, ScoreText):
            scorer = Scorer(self.engine.model, command.ids, self.engine.device, unknown=command.unknown,
                            top=command.top)
            self._arrivals.append(_Scoring(command.job, scorer, now + command.timeout))
        elif isinstance(command, Cancel):
            self._cancels.add(command.job)
        elif isinstance(command, Shutdown):
            self.stopping = True

    # -- a round ----------------------------------------------------------------------------

    def iterate(self) -> None:
        """One round: cancellations, arrivals, timeouts, rows, one step, a score window;
        what it produced joins the news."""
        try:
            self._cancel_all()
            while self._arrivals:
                self._start(self._arrivals.popleft())
            if time.monotonic() > self._deadline:
                self._timeouts()
            if self._batch.revision != self._seen:
                self._allocate()
            stepped = self._step() if self._batch.rows else 0.0
            self._score_turn(stepped)
        except Exception:  # a bug in the loop itself: fail what is running, keep serving
            log.exception("engine loop of %s failed; failing its running requests", self.engine.name)
            self.fail_all((500, "internal error in the generation loop"))

    def due(self, now: float) -> bool:
        """Whether the news should go out at `now` (a `time.monotonic` value): it is
        urgent, the loop is idle, or `window` has passed since the last Step."""
        return self.urgent or now - self._taken >= self.window or not self.busy

    def take(self) -> Step | None:
        """The news and the counts as one Step (None when there is no news and the
        counts have not moved); empties the news."""
        stats = self._measure()
        if not self.news and stats == self._stats:
            return None
        self._stats = stats
        self.urgent = False
        self._taken = time.monotonic()
        started, events = self.news.take()
        return Step(started=started, events=events, stats=stats)

    def fail_all(self, error: tuple[int, str]) -> None:
        """End every request, queued or running, with `error` (in the news); start a
        fresh batch."""
        for job in self._arrivals:
            self._say_end(job.id, error)
        self._arrivals.clear()
        try:
            for job in [*self._jobs, *self._scores]:
                self._end(job, error)
        except Exception:
            log.exception("failing the requests of %s", self.engine.name)
            for job in [*self._jobs, *self._scores]:
                self._say_end(job.id, error)
            self._jobs.clear()
            self._scores.clear()
            self._owner.clear()
        self._new_batch()

    def _new_batch(self) -> None:
        self._batch = self.engine.new_batch(auto_admit=False)
        self._seen = -1
        self._measured = ()  # a fresh batch counts its revisions from zero again

    def _measure(self) -> Stats:
        """The gauges and counters now: the last ones again while what they count is as it
        was (the batch's members, the queue, the cache's lookups and priming), as while
        streams all carry on. Building them took about 2 us, 1% of a single stream's step,
        and `take` is asked every round while a request has nothing to say (priming)."""
        cache = self.engine.cache
        at = (self._batch.revision, self._seen, len(self._arrivals), len(self._scores), cache.hits, cache.misses,
              cache.primed_tokens)
        if at == self._measured:
            return self._stats
        self._measured = at
        if self._seen != self._batch.revision:  # requests ended or failed since the shares were made
            self._count()
        return Stats(running=self._running + len(self._scores), waiting=self._waiting + len(self._arrivals),
                     rows=self._batch.rows, cache_hits=cache.hits, cache_misses=cache.misses, cache_bytes=cache.bytes,
                     cache_entries=len(cache), primed=cache.primed_tokens)

    def _changed(self) -> None:
        """A request started or ended: shares, counts and the deadline need a look."""
        self._seen = -1
        self._deadline = min((j.deadline for j in [*self._jobs, *self._scores]), default=math.inf)
        least, most = WINDOW_S
        self.window = min(most, max(least, min((j.pace for j in self._jobs), default=least)))

    def _cancel_all(self) -> None:
        if not self._cancels:
            return
        gone, self._cancels = self._cancels, set()
        self._arrivals = deque(job for job in self._arrivals if job.id not in gone)
        for job in [j for j in [*self._jobs, *self._scores] if j.id in gone]:
            self._end(job, None)  # its client is gone: nobody reads what it would say

    def _start(self, job: _Generation | _Scoring) -> None:
        if isinstance(job, _Scoring):
            self._scores.append(job)
            self._changed()
            return
        seqs: list[Sequence] = []
        try:
            for request, n in job.groups:
                seqs += self._batch.add(request, n)
        except Exception as e:  # starting this request failed: only it fails (nothing of it has a row yet)
            for seq in seqs:
                self._batch.cancel(seq)
            error = failure(e)
            if error[0] == 500:
                log.exception("starting a request on %s failed", self.engine.name)
            self._say_end(job.id, error)
            return
        self.news.start(job.id, [Choice(seed=s.seed, prompt_tokens=s.prompt_tokens) for s in seqs])
        self.urgent = True
        job.seqs = seqs
        self._jobs.append(job)
        self._changed()
        for index, seq in enumerate(seqs):
            if seq.finished:  # max_chars == 0: done before its first step
                self.news.add(job.id, Out(index=index, finish_reason=seq.finish_reason))
            else:
                self._owner[seq.id] = (job, index)
        if all(s.finished for s in seqs):
            self._end(job, None, done=True)

    def _timeouts(self) -> None:
        now = time.monotonic()
        message = f"request exceeded the server's --request-timeout of {self.timeout:g} s"
        for job in [j for j in [*self._jobs, *self._scores] if now > j.deadline]:
            self._end(job, (408, message))

    def _allocate(self) -> None:
        """Suspend and admit sequences so that each request holds its fair share of the
        rows; count the requests with rows and without."""
        batch = self._batch
        jobs = list(self._jobs)
        held = [[s for s in job.seqs if s.row >= 0] for job in jobs]
        ready = [[s for s in job.seqs if s.ready] for job in jobs]
        demands = [min(self.max_n, len(h) + len(r)) for h, r in zip(held, ready)]
        alloc = water_fill(demands, self.max_concurrency)
        for rows, share in zip(held, alloc):
            for seq in rows[share:]:  # over its share: the latest choices wait
                batch.suspend(seq)
        failed = False
        admitting = [waiting[:max(0, share - len(rows))] for rows, waiting, share in zip(held, ready, alloc)]
        batch.reserve(sum(map(len, admitting)))
        for job, seqs in zip(jobs, admitting):
            try:
                for seq in seqs:
                    batch.admit(seq)
            except Exception as e:  # e.g. the prompt cache failing: this request only
                log.exception("starting a sequence on %s failed", self.engine.name)
                self._end(job, (500, f"generation failed: {type(e).__name__}"))
                failed = True  # its rows are free: share again next round
        batch.trim()
        self._count()
        if not failed:
            self._seen = batch.revision

    def _count(self) -> None:
        """Requests holding rows, and requests holding none."""
        self._running = sum(1 for job in self._jobs if any(s.row >= 0 for s in job.seqs))
        self._waiting = len(self._jobs) - self._running

    def _step(self) -> float:
        """One batched step; returns the seconds it took."""
        started = time.perf_counter()
        try:
            pieces = self._batch.step()
        except Exception:
            log.exception("batched step of %s failed; failing the requests in it", self.engine.name)
            for job in list(self._jobs):
                self._end(job, (500, "internal error in the batched step"))
            self._new_batch()
            return time.perf_counter() - started
        news = self.news
        finished: dict[_Generation, None] = {}  # in order; ended once every piece of the step is out
        for piece in pieces:
            seq = piece.seq
            owner = self._owner.get(seq.id)
            if owner is None:
                continue
            job, index = owner
            if piece.finish_reason == FINISH_ERROR:
                self._end(job, failure(seq.error))
                continue
            if piece.logprobs:
                news.add(job.id, Out(index=index, text=piece.text, logprobs=tuple(piece.logprobs),
                                     finish_reason=piece.finish_reason, generated=seq.generated), seq.id)
            elif piece.text or piece.finish_reason:
                news.text(job.id, seq.id, index, piece.text, seq.generated, piece.finish_reason)
            if piece.text and not job.spoke:
                job.spoke = self.urgent = True
            if piece.finish_reason:
                del self._owner[seq.id]
                if all(s.finished for s in job.seqs):
                    finished[job] = None
        for job in finished:
            self._end(job, None, done=True)
        return time.perf_counter() - started

    def _score_turn(self, stepped: float) -> None:
        """Score one window of the next text, if scoring has not had its share."""
        if not self._scores:
            self._score_debt = 0.0
            return
        if self._batch.rows and self._score_debt > 0:
            self._score_debt -= stepped
            return
        job = self._scores[0]
        started = time.perf_counter()
        try:
            job.scorer.advance(SCORE_WINDOW)
        except Exception as e:
            log.exception("scoring a text on %s failed", self.engine.name)
            self._end(job, (500, f"scoring failed: {type(e).__name__}"))
            return
        spent = time.perf_counter() - started
        self._score_debt = spent * (1 - SCORE_SHARE) / SCORE_SHARE if self._batch.rows else 0.0
        if job.scorer.done:
            self.news.add(job.id, Out(score=job.scorer.result()))
            self._end(job, None, done=True)
        else:
            self._scores.rotate(-1)  # texts take turns

    def _end(self, job: _Generation | _Scoring, error: tuple[int, str] | None, done: bool = False) -> None:
        """End a request: cancelled by its client (no error, not done: nothing is said),
        failed or timed out (`error`), or `done`; free what it held."""
        if isinstance(job, _Scoring):
            if job not in self._scores:
                return
            self._scores.remove(job)
        else:
            if job not in self._jobs:
                return
            for seq in job.seqs:
                self._owner.pop(seq.id, None)
                self._batch.cancel(seq)
            self._jobs.remove(job)
        self._changed()
        if error is not None or done:
            self._say_end(job.id, error)

    def _say_end(self, job: int, error: tuple[int, str] | None) -> None:
        """Request `job`'s last event (failed with `error`, or done): news that goes out
        at once."""
        self.news.add(job, Out(error=error, end=True))
        self.urgent = True
