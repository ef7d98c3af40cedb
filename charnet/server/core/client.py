"""A model's engine process, from the API process's side: start, admission, messages, restart.

An `EngineClient` starts the model's engine process (`charnet.server.core.process`),
answers admission at once (429 when the model's running slots and queue are full, 503
while its engine is down or the server shuts down), sends each admitted request, and
reads the engine's `Step`s on the event loop (`charnet.server.core.wire`), handing each
request its events. The engine's counters become the app's Prometheus metrics.

Processes come from a forkserver (where the platform has one) that has imported the
engine's modules once: a start costs a fork and a model load. Each start gets a socket
pair of its own, so nothing queued for a dead engine reaches the next one.

When the engine process dies (a crash, the OOM killer, SIGKILL), its in-flight requests
end with a 503 error (an error event on a stream), `ready` turns false (so /ready says
503) and the process is started again, after a pause that doubles while it keeps dying
soon after starting.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import socket
import threading
import time
import weakref
from multiprocessing.connection import wait

from charnet.errors import CharnetError
from charnet.inference.request import GenerationRequest
from charnet.server.core import process as core_process
from charnet.server.core import protocol, wire
from charnet.server.core.protocol import (SHUTTING_DOWN, Cancel, Failed, Generate, Out, Ready, ScoreText, Shutdown,
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


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([core_process.__name__])
        return ctx
    return multiprocessing.get_context("spawn")  # Windows


def _start(process: multiprocessing.process.BaseProcess) -> None:
    """Start an engine process; the forkserver, when it must start first, ignoring SIGTERM.

    A service manager stopping the server signals its whole process group; the engines
    ignore that and stop when the API process tells them, after its graceful shutdown.
    The forkserver must outlive that signal too: multiprocessing learns a forked
    process's exit status through it, and reports every engine it forked as exited
    when it dies. An ignored signal stays ignored across exec, so the forkserver is
    started with SIGTERM ignored (outside the main thread, where signals cannot be
    changed, it is started as it is)."""
    if process._start_method == "forkserver" and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGTERM, previous)
    process.start()


_RUNNING: weakref.WeakSet[multiprocessing.process.BaseProcess] = weakref.WeakSet()
"""Engine processes started and not yet disposed of."""


@atexit.register
def _stop_stragglers() -> None:
    """Kill engine processes whose app was never closed (an interpreter exiting without
    its lifespan's end), before multiprocessing's own exit handler (registered earlier,
    so run later) waits for them forever."""
    for process in list(_RUNNING):
        if process.is_alive():
            process.kill()
            process.join(5)


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
        self._encode = protocol.encoder().encode
        self._decode = protocol.replies().decode
        self._incarnation: _Incarnation | None = None
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
        return self._incarnation.process.pid if self.ready else None

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the engine process and wait until it has loaded the model; a
        `CharnetError` saying why if it cannot."""
        message = await self._launch()
        if message is not None:
            raise CharnetError(message)

    async def _launch(self) -> str | None:
        """One engine process with fresh sockets; None once it is ready, else why not."""
        incarnation = _Incarnation(self)
        self._incarnation = incarnation
        answer = await incarnation.started
        if answer is not None:
            await incarnation.dispose()
            return answer
        incarnation.ready = self._ready = True
        self.meters.engine_up.set(1)
        log.info("engine of model %s runs in process %d", self.name, incarnation.process.pid)
        return None

    async def _exited(self, incarnation: _Incarnation) -> None:
        """The engine process of `incarnation` has exited: if it was serving, fail what
        it held and start another (one that never got ready answers its `_launch`)."""
        if incarnation is not self._incarnation or self._closing or not incarnation.ready:
            return
        await incarnation.quiesce()  # what it said before it died still counts
        if self._closing:
            return
        code = incarnation.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.error("the engine process of model %s stopped (%s); restarting it", self.name, how)
        self._ready = False
        self.meters.engine_up.set(0)
        self._fail_all((503, f"the engine of model {self.name!r} stopped ({how}) and is being restarted; retry"))
        self._restarting = asyncio.create_task(self._restart(incarnation))

    async def _restart(self, dead: _Incarnation) -> None:
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
        incarnation, self._incarnation = self._incarnation, None
        if incarnation is not None:
            if incarnation.ready and incarnation.process.is_alive():
                incarnation.send(Shutdown())
            await incarnation.stop(STOP_TIMEOUT_S)
        self._fail_all(SHUTTING_DOWN)
        self._ready = False
        self.meters.engine_up.set(0)

    # -- requests -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDown()
        if not self._ready:
            raise EngineDown()

    def submit(self, groups: list[tuple[GenerationRequest, int]]) -> Job:
        """Send a generation, or raise `Overloaded` (429), `EngineDown` or `ShuttingDown`
        (503) at once."""
        self._check_open()
        job = Job(groups, self.settings.request_timeout, self.meters)
        if self._held + job.slots > self.settings.max_concurrency + self.settings.max_queue:
            self.meters.rejected.inc()
            raise Overloaded()
        self._held += job.slots
        self._send(job, Generate(job=job.id, groups=groups, timeout=self.settings.request_timeout))
        return job

    def submit_score(self, ids, top: int, unknown: int) -> ScoreJob:
        """Send a text to score, or raise `Overloaded` when --max-concurrency texts are
        being scored already (or `EngineDown`, `ShuttingDown`)."""
        self._check_open()
        if self._scoring >= self.settings.max_concurrency:
            self.meters.rejected.inc()
            raise Overloaded()
        job = ScoreJob(ids, top, unknown, self.settings.request_timeout, self.meters)
        self._scoring += 1
        self._send(job, ScoreText(job=job.id, ids=ids, top=top, unknown=unknown, timeout=self.settings.request_timeout))
        return job

    def _send(self, job: Job, command: Generate | ScoreText) -> None:
        job.id = next(self._ids)
        command.job = job.id
        self._jobs[job.id] = job
        self._incarnation.send(command)

    def cancel(self, job: Job) -> None:
        """Stop a request now (its client went away): its slots free at once, and it
        leaves the batch before the engine's next step."""
        if self._jobs.pop(job.id, None) is None:
            return
        self._release(job)
        if self.ready:
            self._incarnation.send(Cancel(job=job.id))

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

    def _receive(self, reply: protocol.Reply, incarnation: _Incarnation) -> None:
        if isinstance(reply, Step):
            self._step(reply)
        elif isinstance(reply, Ready):
            incarnation.answer(None)
        elif isinstance(reply, Failed):
            incarnation.answer(reply.message)

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

    def _reset_counters(self) -> None:
        """A new engine process counts from zero."""
        self._observe(Stats())
        self._last = Stats()


class _Incarnation:
    """One engine process, its end of the socket pair, and the task reading it."""

    def __init__(self, client: EngineClient) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.born = time.monotonic()
        self.ready = False
        self.started: asyncio.Future[str | None] = self.loop.create_future()
        settings = client.settings
        spec = core_process.CoreSpec(
            name=client.name, path=client.path, device=settings.device, cache_bytes=int(settings.cache_mb * (1 << 20)),
            max_concurrency=settings.max_concurrency, max_n=settings.max_n, timeout=settings.request_timeout,
            threads=threads(settings), env={k: v for k, v in os.environ.items() if k.startswith("CHARNET_")},
            log_level=logging.getLevelName(log.getEffectiveLevel()).lower())
        ours, theirs = socket.socketpair()
        self.process = _context().Process(target=core_process.main, args=(spec, theirs),
                                          name=f"charnet-engine-{client.name}", daemon=False)
        _start(self.process)
        _RUNNING.add(self.process)
        theirs.close()  # the engine's copy alone: when it exits, ours reads end of file
        self._socket = ours
        self.writer: asyncio.StreamWriter | None = None
        client._reset_counters()
        self.reading = self.loop.create_task(self._read())
        threading.Thread(target=self._watch, name=f"charnet-engine-watch-{client.name}", daemon=True).start()

    def send(self, command: protocol.Command) -> None:
        """Queue `command` (asyncio's transport buffers what the socket cannot take now)."""
        self.writer.write(wire.frame(self.client._encode(command)))

    def answer(self, message: str | None) -> None:
        if not self.started.done():
            self.started.set_result(message)

    async def _read(self) -> None:
        """Hand on every reply, until the engine's end closes."""
        reader, self.writer = await asyncio.open_connection(sock=self._socket)
        while True:
            try:
                payload = await wire.read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            try:
                self.client._receive(self.client._decode(payload), self)
            except Exception:  # a bug here must not stop the reading: every request of the model would wait
                log.exception("handling a reply of the engine of %s failed", self.client.name)

    def _watch(self) -> None:
        """Thread: wait for the process to exit, then tell the event loop."""
        wait([self.process.sentinel])
        try:
            self.loop.call_soon_threadsafe(self._exited)
        except RuntimeError:  # the event loop has closed
            pass

    def _exited(self) -> None:
        self.answer(f"the engine process exited before it was ready (exit code {self.process.exitcode})")
        task = self.loop.create_task(self.client._exited(self))
        self.client._tasks.add(task)
        task.add_done_callback(self.client._tasks.discard)

    async def quiesce(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Read what the engine said before its end closed (up to `timeout`)."""
        try:
            await asyncio.wait_for(asyncio.shield(self.reading), timeout)
        except (asyncio.TimeoutError, Exception):
            pass

    async def stop(self, timeout: float) -> None:
        """Wait up to `timeout` for the process to exit (reading what it says), then
        kill it; dispose of everything."""
        await self.quiesce(timeout)
        await self.dispose()

    async def dispose(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        await asyncio.to_thread(self.process.join, 10)
        self.reading.cancel()
        try:
            await self.reading
        except (asyncio.CancelledError, Exception):
            pass
        if self.writer is not None:
            self.writer.close()
        else:
            self._socket.close()
