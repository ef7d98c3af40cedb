"""A model's engine processes, from the API process's side: admission, routing, messages,
restart.

An `EngineClient` starts the model's engine processes (`--engines` of them:
`charnet.server.core.engine_process`), answers admission at once (429 when the model's
running slots and queue are full, 503 while none of its engines runs or the server shuts
down), sends each admitted request to the engine holding the fewest sequences, and hands
each request the events of that engine's `Step`s, on the event loop. The engines'
counters become the app's Prometheus metrics.

The engines divide the model's torch threads among those with work (`Share`): one busy
engine steps on all of them, two on half each. Two one-thread engines of 32 streams
each generated 60-63k chars/s together on 2 cores, against 49-53k for one two-thread
engine of 64 (the same run): no barrier between threads in every product, and a step
half as wide.

When an engine process dies (a crash, the OOM killer, SIGKILL), its in-flight requests
end with a 503 error (an error event on a stream), `ready` turns false (so /ready says
503) and the process is started again, after a pause that doubles while it keeps dying
soon after starting; the model's other engines serve on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

import numpy as np

from charnet.errors import CharnetError
from charnet.inference.request import GenerationRequest
from charnet.server.core.engine_process import EngineProcess
from charnet.server.core.process import CoreSpec
from charnet.server.core.protocol import (SHUTTING_DOWN, Cancel, Command, Generate, Out, ScoreText, Share, Shutdown,
                                          Stats, Step)
from charnet.server.job import Job, ScoreJob
from charnet.server.metrics import Metrics
from charnet.server.settings import Settings

log = logging.getLogger("charnet.server")

START_TIMEOUT_S = 300.0
"""Longest an engine process may take to load its model and warm up."""

STOP_TIMEOUT_S = 5.0
"""How long a stopping engine process may take to exit before it is killed."""

RESTART_PAUSES_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses before successive restarts of an engine that keeps dying; an engine that ran
`STABLE_S` seconds starts the sequence over."""

STABLE_S = 60.0


class Overloaded(Exception):
    """Every slot and the whole queue are taken."""


class ShuttingDown(Exception):
    """The server no longer takes requests."""


class EngineDown(Exception):
    """The model's engine process is not running now (it is being started again)."""


def threads(settings: Settings) -> int:
    """Torch threads of a model's engine processes together: --threads, else every core."""
    return settings.threads or os.cpu_count() or 1


def engines(settings: Settings) -> int:
    """Engine processes per model: --engines, else two on a CPU with two threads or more
    to divide, one otherwise (one device, one process)."""
    if settings.engines:
        return settings.engines
    return 2 if settings.device == "cpu" and threads(settings) >= 2 else 1


class _Replica:
    """One of a model's engine processes and what it holds."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.engine: EngineProcess | None = None
        self.ready = False
        self.restarts = 0  # since it last ran `STABLE_S`
        self.restarting: asyncio.Task | None = None
        self.jobs: dict[int, Job] = {}  # sent to it and not ended, by id
        self.held = 0  # sequences of its generation jobs, and its score jobs
        self.last = Stats()  # its engine's latest counters
        self.threads = 0  # the share it was last sent

    def send(self, command: Command) -> None:
        self.engine.send(command)


class EngineClient:
    """One model's engine processes and the requests sent to them."""

    def __init__(self, name: str, path: str, settings: Settings, metrics: Metrics) -> None:
        self.name, self.path, self.settings = name, path, settings
        self.threads = threads(settings)
        """The torch threads its engine processes divide, counted once: `os.cpu_count`
        reads a file (6 us), and the share is worked out as each request comes and goes."""
        self._replicas = [_Replica(i) for i in range(engines(settings))]
        self._ids = itertools.count(1)
        self._held = 0  # sequences of the generation requests sent and not ended (admission)
        self._scoring = 0  # score requests sent and not ended
        self._closing = False
        self._tasks: set[asyncio.Task] = set()  # referenced until done (the loop holds tasks weakly)
        self.meters = metrics.of(name)
        """This model's metrics."""
        self.meters.engine_up.set(0)

    @property
    def ready(self) -> bool:
        """Whether every engine process runs and takes requests."""
        return all(r.ready for r in self._replicas) and not self._closing

    @property
    def pids(self) -> list[int]:
        """The engine processes that serve now."""
        return [r.engine.pid for r in self._replicas if r.ready and not self._closing]

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the engine processes and wait until they have loaded the model; a
        `CharnetError` saying why if one cannot."""
        whys = await asyncio.gather(*(self._launch(r) for r in self._replicas))
        why = next((w for w in whys if w is not None), None)
        if why is not None:
            raise CharnetError(why)

    async def _launch(self, replica: _Replica) -> str | None:
        """One engine process with fresh sockets; None once it is ready, else why not
        (it is killed if it is not ready within `START_TIMEOUT_S`)."""
        engine = EngineProcess(self._spec(), on_step=lambda step: self._step(replica, step),
                               on_exit=lambda engine: self._exited(replica, engine))
        replica.engine = engine
        self._observe(replica, Stats())  # a new engine process counts from zero
        why = await engine.wait_started(START_TIMEOUT_S)
        if why is not None:
            await engine.dispose()
            return why
        engine.serving = replica.ready = True
        replica.threads = 0
        self._up()
        self._share()
        log.info("engine %d of model %s runs in process %d", replica.index, self.name, engine.pid)
        return None

    def _spec(self) -> CoreSpec:
        settings, engines = self.settings, len(self._replicas)
        # --max-concurrency bounds the model's rows, not each engine's: with a batch of that
        # many per engine, floods of n=16 requests took twice the rows from everyone else
        # (bench.hostile: 0.76-0.78x of the quiet aggregate; split, 0.80-0.85x).
        return CoreSpec(
            name=self.name, path=self.path, device=settings.device, cache_bytes=int(settings.cache_mb * (1 << 20)),
            max_concurrency=-(-settings.max_concurrency // engines), max_n=settings.max_n,
            timeout=settings.request_timeout,
            threads=self.threads, engines=engines,
            env={k: v for k, v in os.environ.items() if k.startswith("CHARNET_")},
            log_level=logging.getLevelName(log.getEffectiveLevel()).lower())

    def _up(self) -> None:
        self.meters.engine_up.set(sum(r.ready for r in self._replicas))

    def _exited(self, replica: _Replica, engine: EngineProcess) -> None:
        """`engine` has exited: if it was serving, fail what it held and start another
        (one that never got ready answers its `_launch`)."""
        if engine is replica.engine and engine.serving and not self._closing:
            task = asyncio.create_task(self._recover(replica, engine))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _recover(self, replica: _Replica, engine: EngineProcess) -> None:
        await engine.quiesce(STOP_TIMEOUT_S)  # what it said before it died still counts
        if self._closing:
            return
        code = engine.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.error("engine %d of model %s stopped (%s); restarting it", replica.index, self.name, how)
        replica.ready = False
        self._up()
        self._fail(replica, (503, f"the engine of model {self.name!r} stopped ({how}) and is being restarted; retry"))
        replica.restarting = asyncio.create_task(self._restart(replica, engine))

    async def _restart(self, replica: _Replica, dead: EngineProcess) -> None:
        await dead.dispose()
        stable = time.monotonic() - dead.born >= STABLE_S
        replica.restarts = 0 if stable else replica.restarts
        while not self._closing:
            await asyncio.sleep(RESTART_PAUSES_S[min(replica.restarts, len(RESTART_PAUSES_S) - 1)])
            replica.restarts += 1
            self.meters.engine_restarts.inc()
            if self._closing:
                return
            why = await self._launch(replica)
            if why is None:
                return
            log.error("restarting engine %d of model %s failed: %s", replica.index, self.name, why)

    async def close(self) -> None:
        """Stop taking requests; the engines end what runs with a 503 and exit (killed
        after `STOP_TIMEOUT_S`)."""
        self._closing = True
        await asyncio.gather(*(self._close(r) for r in self._replicas))
        self.meters.engine_up.set(0)

    async def _close(self, replica: _Replica) -> None:
        if replica.restarting is not None:
            replica.restarting.cancel()
        engine, replica.engine, replica.ready = replica.engine, None, False
        if engine is not None:
            if engine.serving and engine.process.is_alive():
                engine.send(Shutdown())
            await engine.stop(STOP_TIMEOUT_S)
        self._fail(replica, SHUTTING_DOWN)

    # -- requests -------------------------------------------------------------------------

    def _pick(self) -> _Replica:
        """The engine to send a request to: of those serving, the one holding the fewest
        sequences (the first on a tie, so a lightly loaded server keeps to one engine
        and its prompt cache); `ShuttingDown` or `EngineDown` if none can take it."""
        if self._closing:
            raise ShuttingDown()
        serving = [r for r in self._replicas if r.ready]
        if not serving:
            raise EngineDown()
        return min(serving, key=lambda r: r.held)

    def submit(self, groups: list[tuple[GenerationRequest, int]], pace: float) -> Job:
        """Send a generation whose response takes events at most every `pace` seconds
        (`Job.pace`), or raise `Overloaded` (429), `EngineDown` or `ShuttingDown` (503)
        at once."""
        replica = self._pick()
        job = Job(groups, self.settings.request_timeout, self.meters, pace)
        if self._held + job.slots > self.settings.max_concurrency + self.settings.max_queue:
            self.meters.rejected.inc()
            raise Overloaded()
        self._held += job.slots
        self._send(replica, job, Generate(job=self._id(job), groups=groups, timeout=self.settings.request_timeout,
                                          pace=pace))
        return job

    def submit_score(self, ids: np.ndarray, top: int, unknown: int) -> ScoreJob:
        """Send a text to score, or raise `Overloaded` when --max-concurrency texts are
        being scored already (or `EngineDown`, `ShuttingDown`)."""
        replica = self._pick()
        if self._scoring >= self.settings.max_concurrency:
            self.meters.rejected.inc()
            raise Overloaded()
        job = ScoreJob(ids, top, unknown, self.settings.request_timeout, self.meters)
        self._scoring += 1
        self._send(replica, job, ScoreText(job=self._id(job), ids=ids, top=top, unknown=unknown,
                                           timeout=self.settings.request_timeout))
        return job

    def _id(self, job: Job) -> int:
        job.id = next(self._ids)
        return job.id

    def _send(self, replica: _Replica, job: Job, command: Generate | ScoreText) -> None:
        replica.jobs[job.id] = job
        replica.held += self._slots(job)
        self._share()  # before the request: the engine steps on its share from its first step
        replica.send(command)

    @staticmethod
    def _slots(job: Job) -> int:
        return 1 if isinstance(job, ScoreJob) else job.slots

    def cancel(self, job: Job) -> None:
        """Stop a request now (its client went away): its slots free at once, and it
        leaves the batch before the engine's next step."""
        replica = next((r for r in self._replicas if job.id in r.jobs), None)
        if replica is None:  # it has ended already
            return
        del replica.jobs[job.id]
        self._release(replica, job)
        if replica.ready:
            replica.send(Cancel(job=job.id))

    def _release(self, replica: _Replica, job: Job) -> None:
        replica.held -= self._slots(job)
        if isinstance(job, ScoreJob):
            self._scoring -= 1
        else:
            self._held -= job.slots
        self._share()

    def _share(self) -> None:
        """Divide the model's threads among the engines with work (all of them to one
        alone), telling each serving engine whose share changed."""
        if self._closing or len(self._replicas) == 1:
            return
        busy = sum(1 for r in self._replicas if r.held)
        share = max(1, self.threads // max(1, busy))
        for r in self._replicas:
            if r.ready and r.threads != share:
                r.threads = share
                r.send(Share(threads=share))

    def _fail(self, replica: _Replica, error: tuple[int, str]) -> None:
        jobs, replica.jobs = list(replica.jobs.values()), {}
        for job in jobs:
            self._release(replica, job)
            job._deliver(Out(error=error, end=True))

    # -- what the engine says -------------------------------------------------------------

    def _step(self, replica: _Replica, step: Step) -> None:
        jobs = replica.jobs
        for job_id, choices in step.started:
            job = jobs.get(job_id)
            if job is not None:
                job.choices = choices
        for job_id, out in step.events:
            job = jobs.get(job_id)
            if job is None:  # cancelled meanwhile
                continue
            if out.end:
                del jobs[job_id]
                self._release(replica, job)
                if out.error is not None:
                    self._count(out.error[0])
            job._deliver(out)
        self._observe(replica, step.stats)

    def _count(self, status: int) -> None:
        if status == 408:
            self.meters.timeouts.inc()
        elif status == 500:
            self.meters.failures.inc()

    def _observe(self, replica: _Replica, stats: Stats) -> None:
        """The engines' gauges as they are, summed; their counters (which restart from
        zero with each process) added to the app's as they grow."""
        m, last = self.meters, replica.last
        if stats == last:
            return
        for counter, now, before in ((m.cache_hits, stats.cache_hits, last.cache_hits),
                                     (m.cache_misses, stats.cache_misses, last.cache_misses),
                                     (m.primed_chars, stats.primed, last.primed)):
            if now > before:
                counter.inc(now - before)
        replica.last = stats
        every = [r.last for r in self._replicas]
        m.running.set(sum(s.running for s in every))
        m.waiting.set(sum(s.waiting for s in every))
        m.batch_rows.set(sum(s.rows for s in every))
        m.cache_bytes.set(sum(s.cache_bytes for s in every))
        m.cache_entries.set(sum(s.cache_entries for s in every))
