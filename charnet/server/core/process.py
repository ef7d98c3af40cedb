"""A model's engine process: loads the model, runs its `EngineCore`, talks over ZeroMQ.

Started by `charnet.server.core.client.EngineClient` (from a forkserver that has already
imported this module, so a start or restart costs a fork and a model load, not a Python
start-up). It pulls `Command`s and pushes one `Step` per round of the loop; while the
batch has work it looks for commands between steps without waiting, and while idle it
blocks on them.

It exits on `Shutdown` (after failing what was running with a 503), or as soon as the API
process is gone: the read end of a pipe whose only writer is the API process turns
readable (end of file) when that process exits, however it exits. It ignores SIGINT and
SIGTERM: a terminal's Ctrl-C or a service manager signals the whole process group, and
the API process decides when the engine stops, after its graceful shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch
import zmq

from charnet.inference.batch import Batch
from charnet.inference.engine import Engine
from charnet.inference.prompt_cache import PromptCache
from charnet.inference.request import GenerationRequest
from charnet.server.core import protocol
from charnet.server.core.loop import EngineCore
from charnet.server.core.protocol import SHUTTING_DOWN, Failed, Ready, Step

PARENT_CHECK_S = 0.1
"""How often a busy engine looks whether the API process is still there."""

LINGER_MS = 2000
"""How long the last messages (the shutdown's 503s) may take to leave."""

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
    """Torch threads for the model's steps."""
    commands: str
    """ZeroMQ endpoint to pull commands from."""
    replies: str
    """ZeroMQ endpoint to push replies to."""
    env: dict[str, str]
    """charnet's environment variables in the API process now (a forkserver's children
    would otherwise see the environment it started with)."""
    log_level: str = "warning"


def warm_up(engine: Engine) -> None:
    """Generate a few characters for two and eight sequences, priming a prompt alone and
    beside others, so the first request pays no compilation or first-call set-up; with
    a cache of its own, so the server's cache and its counters start empty."""
    batch = Batch(engine.kernel, engine.vocab, PromptCache(max_bytes=0),
                  document_start=engine.checkpoint.document_start)
    batch.add(GenerationRequest.of("", max_chars=4, seed=0), 2)
    while len(batch):
        batch.step()
    for i in range(8):
        batch.add(GenerationRequest.of("", max_chars=4, seed=i))
    while len(batch):
        batch.step()


def main(spec: CoreSpec, parent: Connection) -> None:
    """The engine process (target of `multiprocessing.Process`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.update(spec.env)
    logging.basicConfig(stream=sys.stderr, level=spec.log_level.upper(),
                        format=f"%(levelname)s:     charnet engine {spec.name} (pid {os.getpid()}): %(message)s")
    torch.set_num_threads(spec.threads)
    context = zmq.Context()
    commands = context.socket(zmq.PULL)
    commands.setsockopt(zmq.RCVHWM, 0)
    commands.connect(spec.commands)
    replies = context.socket(zmq.PUSH)
    replies.setsockopt(zmq.SNDHWM, 0)
    replies.connect(spec.replies)
    encode = protocol.encoder().encode
    try:
        engine = Engine.open(spec.path, spec.device, cache_bytes=spec.cache_bytes)
        warm_up(engine)
    except Exception as e:  # a checkpoint that broke since the server checked it, a device gone
        replies.send(encode(Failed(message=" ".join(str(e).split()) or type(e).__name__)))
        replies.close(LINGER_MS)
        context.term()
        sys.exit(1)
    core = EngineCore(engine, max_concurrency=spec.max_concurrency, max_n=spec.max_n, timeout=spec.timeout)
    replies.send(encode(Ready(pid=os.getpid())))
    try:
        _serve(core, commands, replies, parent)
    finally:
        commands.close(0)
        replies.close(LINGER_MS)
        context.term()


def _serve(core: EngineCore, commands: zmq.Socket, replies: zmq.Socket, parent: Connection) -> None:
    decode, encode = protocol.commands().decode, protocol.encoder().encode
    checked = time.monotonic()
    while True:
        # Busy: take what has come in without waiting (a flag read, no system call).
        # Idle: sleep until a command comes, waking now and then to look at the parent.
        if not core.busy:
            commands.poll(int(PARENT_CHECK_S * 1000))
        while commands.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            core.receive(decode(commands.recv()))
        now = time.monotonic()
        if now - checked >= PARENT_CHECK_S:
            checked = now
            if parent.poll(0):  # end of file: the API process is gone
                log.warning("the API process is gone; stopping")
                return
        if core.stopping:
            replies.send(encode(Step(started=[], events=core.fail_all(SHUTTING_DOWN), stats=protocol.Stats())))
            return
        if core.busy:
            step = core.iterate()
            if step is not None:
                replies.send(encode(step))
