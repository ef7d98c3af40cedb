"""A model's engine process, from the API process's side: admission, messages, restart.

An `EngineClient` starts the model's engine process (`charnet.server.core.engine_process`),
answers admission at once (429 when the model's running slots and queue are full, 503
while its engine is down or the server shuts down), sends each admitted request, and
hands each request the events of the engine's `Step`s, on the event loop. The engine's
counters become the app's Prometheus metrics.

When the engine process dies (a crash, the OOM killer, SIGKILL), its in-flight requests
end with a 503 error (an error event on a stream), `ready` turns false (so /ready says
503) and the process is started again, after a pause that doubles while it keeps dying
soon after starting.
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
from charnet.server.core.protocol import SHUTTING_DOWN, Cancel, Generate, Out, ScoreText, Shutdown, Stats, Step
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
    """Torch threads of each engine process: --threads, else every core."""
    return settings.threads or os.cpu_count() or 1


class EngineClient:
    """One model's engine process and the requests sent to it."""

    def __init__(self, name: str, path: str, settings: Settings, metrics: Metrics) -> None:
        self.name, self.path, self.settings = name, path, settings
        self._jobs: dict[int, Job] = {}  # sent and not ended, by id
        self._ids = itertools.count(1)
        self._held = 0  # sequences of the requests in _jobs (admission)
        self._scoring = 0  # score requests in _jobs
        self._ready = False
        self._closing = False
        self._engine: EngineProcess | None = None
        self._restarts = 0
        self._last = Stats()
        self._restarting: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()  # referenced until done (the loop holds tasks weakly)
        self.meters = metrics.of(name)
        """This model's metrics."""
        self.meters.engine_up.set(0)

    @property
    def ready(self) -> bool:
        """Whether the engine process runs and takes requests."""
        return self._ready and not self._closing

    @property
    def pid(self) -> int | None:
        """The engine process, while it serves."""
        return self._engine.pid if self.ready else None

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the engine process and wait until it has loaded the model; a
        `CharnetError` saying why if it cannot."""
        message = await self._launch()
        if message is not None:
            raise CharnetError(message)

    async def _launch(self) -> str | None:
        """One engine process with fresh sockets; None once it is ready, else why not
        (it is killed if it is not ready within `START_TIMEOUT_S`)."""
        engine = EngineProcess(self._spec(), on_step=self._step, on_exit=self._exited)
        self._engine = engine
        self._observe(Stats())  # a new engine process counts from zero
        why = await engine.wait_started(START_TIMEOUT_S)
        if why is not None:
            await engine.dispose()
            return why
        engine.serving = self._ready = True
        self.meters.engine_up.set(1)
        log.info("engine of model %s runs in process %d", self.name, engine.pid)
        return None

    def _spec(self) -> CoreSpec:
        settings = self.settings
        return CoreSpec(
            name=self.name, path=self.path, device=settings.device, cache_bytes=int(settings.cache_mb * (1 << 20)),
            max_concurrency=settings.max_concurrency, max_n=settings.max_n, timeout=settings.request_timeout,
            threads=threads(settings), env={k: v for k, v in os.environ.items() if k.startswith("CHARNET_")},
            log_level=logging.getLevelName(log.getEffectiveLevel()).lower())

    def _exited(self, engine: EngineProcess) -> None:
        """`engine` has exited: if it was serving, fail what it held and start another
        (one that never got ready answers its `_launch`)."""
        if engine is self._engine and engine.serving and not self._closing:
            task = asyncio.create_task(self._recover(engine))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _recover(self, engine: EngineProcess) -> None:
        await engine.quiesce(STOP_TIMEOUT_S)  # what it said before it died still counts
        if self._closing:
            return
        code = engine.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.error("the engine process of model %s stopped (%s); restarting it", self.name, how)
        self._ready = False
        self.meters.engine_up.set(0)
        self._fail_all((503, f"the engine of model {self.name!r} stopped ({how}) and is being restarted; retry"))
        self._restarting = asyncio.create_task(self._restart(engine))

    async def _restart(self, dead: EngineProcess) -> None:
        await dead.dispose()
        stable = time.monotonic() - dead.born >= STABLE_S
        self._restarts = 0 if stable else self._restarts
        while not self._closing:
            await asyncio.sleep(RESTART_PAUSES_S[min(self._restarts, len(RESTART_PAUSES_S) - 1)])
            self._restarts += 1
            self.meters.engine_restarts.inc()
            if self._closing:
                return
            why = await self._launch()
            if why is None:
                return
            log.error("restarting the engine of model %s failed: %s", self.name, why)

    async def close(self) -> None:
        """Stop taking requests; the engine ends what runs with a 503 and exits (killed
        after `STOP_TIMEOUT_S`)."""
        self._closing = True
        if self._restarting is not None:
            self._restarting.cancel()
        engine, self._engine = self._engine, None
        if engine is not None:
            if engine.serving and engine.process.is_alive():
                engine.send(Shutdown())
            await engine.stop(STOP_TIMEOUT_S)
        self._fail_all(SHUTTING_DOWN)
        self._ready = False
        self.meters.engine_up.set(0)

    # -- requests -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDown()
        if not self._ready:
            raise EngineDown()

    def submit(self, groups: list[tuple[GenerationRequest, int]], pace: float) -> Job:
        """Send a generation whose response takes events at most every `pace` seconds
        (`Job.pace`), or raise `Overloaded` (429), `EngineDown` or `ShuttingDown` (503)
        at once."""
        self._check_open()
        job = Job(groups, self.settings.request_timeout, self.meters, pace)
        if self._held + job.slots > self.settings.max_concurrency + self.settings.max_queue:
            self.meters.rejected.inc()
            raise Overloaded()
        self._held += job.slots
        job.id = next(self._ids)
        self._send(job, Generate(job=job.id, groups=groups, timeout=self.settings.request_timeout, pace=pace))
        return job

    def submit_score(self, ids: np.ndarray, top: int, unknown: int) -> ScoreJob:
        """Send a text to score, or raise `Overloaded` when --max-concurrency texts are
        being scored already (or `EngineDown`, `ShuttingDown`)."""
        self._check_open()
        if self._scoring >= self.settings.max_concurrency:
            self.meters.rejected.inc()
            raise Overloaded()
        job = ScoreJob(ids, top, unknown, self.settings.request_timeout, self.meters)
        self._scoring += 1
        job.id = next(self._ids)
        self._send(job, ScoreText(job=job.id, ids=ids, top=top, unknown=unknown, timeout=self.settings.request_timeout))
        return job

    def _send(self, job: Job, command: Generate | ScoreText) -> None:
        self._jobs[job.id] = job
        self._engine.send(command)

    def cancel(self, job: Job) -> None:
        """Stop a request now (its client went away): its slots free at once, and it
        leaves the batch before the engine's next step."""
        if self._jobs.pop(job.id, None) is None:
            return
        self._release(job)
        if self.ready:
            self._engine.send(Cancel(job=job.id))

    def _release(self, job: Job) -> None:
        if isinstance(job, ScoreJob):
            self._scoring -= 1
        else:
            self._held -= job.slots

    def _fail_all(self, error: tuple[int, str]) -> None:
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            self._release(job)
            job._deliver(Out(error=error, end=True))

    # -- what the engine says -------------------------------------------------------------

    def _step(self, step: Step) -> None:
        jobs = self._jobs
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
                self._release(job)
                if out.error is not None:
                    self._count(out.error[0])
            job._deliver(out)
        self._observe(step.stats)

    def _count(self, status: int) -> None:
        if status == 408:
            self.meters.timeouts.inc()
        elif status == 500:
            self.meters.failures.inc()

    def _observe(self, stats: Stats) -> None:
        """The engine's gauges as they are; its counters (which restart from zero with
        the process) added to the app's as they grow."""
        m, last = self.meters, self._last
        if stats == last:
            return
        m.running.set(stats.running)
        m.waiting.set(stats.waiting)
        m.batch_rows.set(stats.rows)
        m.cache_bytes.set(stats.cache_bytes)
        m.cache_entries.set(stats.cache_entries)
        for counter, now, before in ((m.cache_hits, stats.cache_hits, last.cache_hits),
                                     (m.cache_misses, stats.cache_misses, last.cache_misses),
                                     (m.primed_chars, stats.primed, last.primed)):
            if now > before:
                counter.inc(now - before)
        self._last = stats
