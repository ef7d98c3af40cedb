"""The engine process's warm-up: what a server's load would build later, built before it
says it is ready."""

from __future__ import annotations

import pytest
import torch

from charnet.inference.engine import Engine
from charnet.server.core.process import warm_up


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
