"""A model's engine process: loads the model, runs its `EngineCore`, talks over a socket.

Started by `charnet.server.core.client.EngineClient` (from a forkserver that has already
imported this module, so a start or restart costs a fork and a model load, not a Python
start-up), with its end of a socket pair (`charnet.server.core.wire`). It reads
`Command`s (a thread of its own reads them: `charnet.server.core.wire.Inbox`) and writes
`Step`s; it takes what has arrived before every step, and while idle it waits for it.

It exits on `Shutdown` (after failing what was running with a 503), or as soon as the API
process is gone: its end of the socket reads end of file when that process exits,
however it exits. It ignores SIGINT and SIGTERM: a terminal's Ctrl-C or a service
manager signals the whole process group, and the API process decides when the engine
stops, after its graceful shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from charnet.inference.batch import Batch
from charnet.inference.engine import Engine
from charnet.inference.prompt_cache import PromptCache
from charnet.inference.request import GenerationRequest
from charnet.server.core import protocol
from charnet.server.core.loop import EngineCore
from charnet.server.core.protocol import SHUTTING_DOWN, Failed, Ready, Share
from charnet.server.core.threads import Threads
from charnet.server.core.wire import Inbox, frame

NICENESS = 10
"""The engine process runs at this much lower priority than the API process. The API's
work is small and waits on nobody but the engine (reading requests, writing frames);
the engine's is a long stream of steps. With the API first in line, the engine uses
every core while the API is idle and gives way the moment it is not: at 64 streaming
clients on 2 cores, p99 time to first character went from 73 to 43 ms."""

log = logging.getLogger("charnet.server")


@dataclass(frozen=True, kw_only=True)
class CoreSpec:
    """Everything an engine process needs, passed to it when it starts."""

    name: str
    """The model's name (for logs)."""
    path: str
    """Its checkpoint directory."""
    device: str
    cache_bytes: int
    """Prompt-state cache size."""
    max_concurrency: int
    max_n: int
    timeout: float
    """The server's --request-timeout (each request brings its own deadline)."""
    threads: int
    """Torch threads for the model's steps, while its other engine processes are idle."""
    engines: int = 1
    """The model's engine processes, which share `threads` among those with work."""
    env: dict[str, str]
    """charnet's environment variables in the API process now (a forkserver's children
    would otherwise see the environment it started with)."""
    log_level: str = "warning"


def warm_up(engine: Engine, max_concurrency: int, thread_counts: tuple[int, ...]) -> None:
    """Generate a few characters for two and eight sequences, priming a prompt alone and
    beside others, so the first request pays no compilation or first-call set-up; with
    a cache of its own, so the server's cache and its counters start empty. Then step a
    throwaway batch of every size up to `max_concurrency` on each of `thread_counts`
    (torch is left on the last): oneDNN builds what a product of a new shape needs the
    first time it runs one (about 0.5 MB a shape here) and keeps it, so a server grew by
    up to 140 MB as its batch passed through sizes it had not had yet. Then take the
    whole prompt cache's memory (`PromptCache.reserve`): the process's memory under
    load is what it has when it says it is ready."""
    batch = Batch(engine.kernel, engine.vocab, PromptCache(max_bytes=0),
                  document_start=engine.checkpoint.document_start)
    batch.add(GenerationRequest.of("", max_chars=4, seed=0), 2)
    while len(batch):
        batch.step()
    for i in range(8):
        batch.add(GenerationRequest.of("", max_chars=4, seed=i))
    while len(batch):
        batch.step()
    kernel = engine.kernel
    for count in thread_counts:
        torch.set_num_threads(count)
        for rows in sorted({kernel.rows(n) for n in range(1, max_concurrency + 1)}):
            kernel.step(torch.zeros(rows, dtype=torch.long, device=kernel.device), kernel.zero_state(rows))
    engine.cache.reserve(*kernel.initial())


def prepare(spec: CoreSpec) -> tuple[Engine, Threads]:
    """The model's engine and its thread counts, warmed up (`warm_up`). The engine
    process runs this on a thread of its own, and its loop on the main thread.

    Why: oneDNN keeps what it builds for each product shape in memory allocated between
    the warm-up's temporaries, so once they are freed glibc's malloc arena is in pieces,
    and every later allocation searches them. After warming 256 batch sizes a single
    stream stepped 8-18% slower (malloc 1.4% -> 5.3% of its time). A thread allocates
    from an arena of its own, so the loop's stays whole; what oneDNN built is shared by
    every thread."""
    engine = Engine.open(spec.path, spec.device, cache_bytes=spec.cache_bytes)
    threads = Threads(spec.threads, engine.kernel, batches=(1, 8, 64, spec.max_concurrency), engines=spec.engines)
    warm_up(engine, spec.max_concurrency, threads.counts)
    return engine, threads


def main(spec: CoreSpec, channel: socket.socket) -> None:
    """The engine process (target of `multiprocessing.Process`); `channel` its end of the
    socket pair."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.update(spec.env)
    logging.basicConfig(stream=sys.stderr, level=spec.log_level.upper(),
                        format=f"%(levelname)s:     charnet engine {spec.name} (pid {os.getpid()}): %(message)s")
    if hasattr(os, "nice"):  # not on Windows
        os.nice(NICENESS)
    torch.set_num_threads(spec.threads)  # its threads, made later, inherit the niceness
    encode = protocol.encoder().encode
    try:
        with ThreadPoolExecutor(1) as own:
            engine, threads = own.submit(prepare, spec).result()
    except Exception as e:  # a checkpoint that broke since the server checked it, a device gone
        channel.sendall(frame(encode(Failed(message=" ".join(str(e).split()) or type(e).__name__))))
        channel.close()
        sys.exit(1)
    core = EngineCore(engine, max_concurrency=spec.max_concurrency, max_n=spec.max_n, timeout=spec.timeout)
    try:
        channel.sendall(frame(encode(Ready(pid=os.getpid()))))
        _serve(core, channel, threads)
    except (BrokenPipeError, ConnectionResetError):  # the API process went while we wrote
        log.warning("the API process is gone; stopping")
    finally:
        channel.close()


def _serve(core: EngineCore, channel: socket.socket, threads: Threads) -> None:
    encode = protocol.encoder().encode
    inbox = Inbox(channel, protocol.commands().decode)
    while True:
        busy = core.busy
        if not busy:
            inbox.wait()
        if inbox.items or inbox.closed:
            commands = inbox.take()
            for command in commands:
                if isinstance(command, Share):
                    threads.lend(command.threads)
                else:
                    core.receive(command)
            if commands:
                threads.heard()
                busy = core.busy
        if core.stopping:
            core.fail_all(SHUTTING_DOWN)
            if (last := core.take()) is not None:
                channel.sendall(frame(encode(last)))
            return
        if inbox.closed and not inbox.items:  # the API process is gone
            log.warning("the API process is gone; stopping")
            return
        if busy:
            threads.fit()
            core.iterate()
            if core.due(time.monotonic()) and (step := core.take()) is not None:
                channel.sendall(frame(encode(step)))
