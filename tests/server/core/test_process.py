"""The engine process's preparation: what a server's load would build later, built before
it says it is ready, on a thread of its own."""

from __future__ import annotations

import multiprocessing
import socket
import threading

import pytest
import torch

from charnet.inference.engine import Engine
from charnet.server.core import process, protocol
from charnet.server.core.process import CoreSpec, warm_up
from charnet.server.core.protocol import Failed
from charnet.server.core.wire import Frames


@pytest.fixture(autouse=True)
def _threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_warm_up_steps_every_batch_size_on_every_thread_count(checkpoint):
    """oneDNN keeps what it builds for each product shape (about 0.5 MB): a server must
    not grow by that as its batch first reaches each size under load."""
    engine = Engine.open(checkpoint, cache_bytes=1 << 20)
    kernel = engine.kernel
    stepped = []
    step = kernel.step

    def recorded(tokens, state, out=None):
        stepped.append((torch.get_num_threads(), tokens.shape[0]))
        return step(tokens, state, out)
    kernel.step = recorded
    warm_up(engine, max_concurrency=20, thread_counts=(1, 2))
    sizes = {kernel.rows(n) for n in range(1, 21)}
    for threads in (1, 2):
        assert {rows for t, rows in stepped if t == threads} >= sizes, threads
    assert torch.get_num_threads() == 2  # the last count: the engine's own


def _prepare_naming_its_thread(spec: CoreSpec):
    raise RuntimeError(f"prepared on the main thread: {threading.current_thread() is threading.main_thread()}")


def _engine_main(spec: CoreSpec, channel: socket.socket) -> None:
    """An engine process whose preparation fails, saying on which thread it ran."""
    process.prepare = _prepare_naming_its_thread
    process.main(spec, channel)


def test_the_engine_prepares_its_model_off_the_loops_thread(tmp_path):
    """What loading and warming up leave in malloc's arena (oneDNN's per-shape memory
    between freed temporaries) must not be where the loop allocates: `prepare` runs on a
    thread of its own, and its failure still reaches the API process."""
    ours, theirs = socket.socketpair()
    spec = CoreSpec(name="m", path=str(tmp_path), device="cpu", cache_bytes=0, max_concurrency=1, max_n=1,
                    timeout=60.0, threads=1, env={})
    child = multiprocessing.get_context("spawn").Process(target=_engine_main, args=(spec, theirs))
    child.start()
    theirs.close()
    ours.settimeout(120)
    frames, payloads = Frames(), []
    while not payloads:
        data = ours.recv(1 << 16)
        assert data, "the engine process closed its socket without a word"
        payloads = frames.feed(data)
    child.join(60)
    reply = protocol.replies().decode(payloads[0])
    assert isinstance(reply, Failed) and reply.message == "prepared on the main thread: False"
    assert child.exitcode == 1
