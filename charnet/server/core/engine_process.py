"""One engine process from the API process's side: started, read, watched, stopped.

Processes come from a forkserver (where the platform has one) that has imported the
engine's modules once: a start costs a fork and a model load. Each start gets a socket
pair of its own, so nothing queued for a dead engine reaches the next one. What the
engine says arrives on the event loop; its exit is seen by a thread waiting on the
process's sentinel, which tells the event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import multiprocessing.forkserver
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import wait

from charnet.server.core import process as core_process
from charnet.server.core import protocol, wire
from charnet.server.core.process import CoreSpec
from charnet.server.core.protocol import Failed, Ready, Step

log = logging.getLogger("charnet.server")


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


class EngineProcess:
    """One engine process, its end of the socket pair, and the task reading it.

    `on_step` receives each `Step` the engine sends, and `on_exit` this object once the
    process has exited, both on the event loop that made it."""

    def __init__(self, spec: CoreSpec, on_step: Callable[[Step], None],
                 on_exit: Callable[[EngineProcess], None]) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.born = time.monotonic()
        self.serving = False
        """Set by its owner once it has put the process in service."""
        self._on_step, self._on_exit = on_step, on_exit
        self._encode = protocol.encoder().encode
        self._decode = protocol.replies().decode
        self._started: asyncio.Future[str | None] = self.loop.create_future()
        ours, theirs = socket.socketpair()
        self.process = _context().Process(target=core_process.main, args=(spec, theirs),
                                          name=f"charnet-engine-{spec.name}", daemon=False)
        _start(self.process)
        _RUNNING.add(self.process)
        theirs.close()  # the engine's copy alone: when it exits, ours reads end of file
        self._socket = ours
        self._writer: asyncio.StreamWriter | None = None
        self._outbox: wire.Outbox | None = None  # set with `_writer`
        self._gone = asyncio.Event()  # set on the event loop once the process has exited
        self._reading = self.loop.create_task(self._read())
        threading.Thread(target=self._watch, name=f"charnet-engine-watch-{spec.name}", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def wait_started(self, timeout: float) -> str | None:
        """None once the engine has loaded its model and warmed up, else why it has not
        within `timeout` seconds (it failed, exited or took too long)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._started), timeout)
        except asyncio.TimeoutError:
            return f"the engine process was not ready within {timeout:g} s"

    def send(self, command: protocol.Command) -> None:
        """Queue `command`: it goes out with the other commands of this turn of the event
        loop (`wire.Outbox`; asyncio's transport buffers what the socket cannot take), but
        a `Share` at once (with those queued before it).

        Why a `Share` at once: when a burst of requests begins, the first goes to one engine
        and the second, often a few milliseconds later as clients connect, to the other,
        which tells both to step on one thread. Gathered, that word waited up to
        `wire.GATHER_S` more, and the first engine's one-thread window
        (`threads.ARRIVALS_S` from its first request) could run out meanwhile: it then
        stepped on every thread beside the API process and the other engine, its steps
        waiting for the worker at each product. Traced: 2 bursts of 64 in 7 had an engine
        on two threads for 16-17 ms before the word was read, the first characters of its
        requests late by as much; none of 12 since."""
        self._outbox.put(self._encode(command), at_once=isinstance(command, protocol.Share))

    def _answer(self, why: str | None) -> None:
        if not self._started.done():
            self._started.set_result(why)

    async def _read(self) -> None:
        """Hand on every reply, until the engine's end closes."""
        reader, self._writer = await asyncio.open_connection(sock=self._socket)
        self._outbox = wire.Outbox(self.loop, self._writer.write)
        while True:
            try:
                payload = await wire.read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            try:
                reply = self._decode(payload)
                if isinstance(reply, Step):
                    self._on_step(reply)
                elif isinstance(reply, Ready):
                    self._answer(None)
                elif isinstance(reply, Failed):
                    self._answer(reply.message)
            except Exception:  # a bug here must not stop the reading: every request of the model would wait
                log.exception("handling a reply of the engine of %s failed", self.spec.name)

    def _watch(self) -> None:
        """Thread: wait for the process to exit, then tell the event loop."""
        wait([self.process.sentinel])
        try:
            self.loop.call_soon_threadsafe(self._exited)
        except RuntimeError:  # the event loop has closed
            pass

    def _exited(self) -> None:
        self._gone.set()
        self._answer(f"the engine process exited before it was ready (exit code {self.process.exitcode})")
        self._on_exit(self)

    async def quiesce(self, timeout: float) -> None:
        """Read what the engine said before its end closed (up to `timeout`)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reading), timeout)
        except (asyncio.TimeoutError, Exception):
            pass

    async def stop(self, timeout: float) -> None:
        """Wait up to `timeout` for the process to exit (reading what it says), then
        kill it; dispose of everything."""
        await self.quiesce(timeout)
        await self.dispose()

    async def dispose(self) -> None:
        """Kill the process if it still runs, and close its socket."""
        if self.process.is_alive():
            self.process.kill()
        # The exit status is read on the event loop alone (`_exited`, which the watching
        # thread calls): two threads polling a forkserver's process race for its one
        # status message, and the one that loses reports exit code 255.
        try:
            await asyncio.wait_for(self._gone.wait(), 10)
        except asyncio.TimeoutError:
            log.warning("the engine process of %s did not exit within 10 s of its kill", self.spec.name)
        else:
            self.process.join(0)
        _RUNNING.discard(self.process)
        self._reading.cancel()
        try:
            await self._reading
        except (asyncio.CancelledError, Exception):
            pass
        if self._writer is not None:
            self._writer.close()
        else:
            self._socket.close()
