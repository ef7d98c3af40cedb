"""The engine process's torch threads: one while requests arrive, all of them otherwise,
and only where the model's steps give the same bits on both."""

from __future__ import annotations

import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from charnet.device import native_bf16
from charnet.inference.engine import Engine
from charnet.server.core.threads import ARRIVALS_S, Threads, clear_of_this_cpu, same_bits


@pytest.fixture(autouse=True)
def _threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workers():
    """The native threads of this process that Python did not start (torch's OpenMP
    workers, started by a product on two threads); their CPUs are given back after."""
    torch.set_num_threads(2)
    torch.ones(1 << 22).mul_(2)  # big enough for torch to split it among its threads
    ours = {t.native_id for t in threading.enumerate()}
    tids = [int(t) for t in os.listdir("/proc/self/task") if int(t) not in ours]
    before = {t: os.sched_getaffinity(t) for t in tids}
    yield tids
    for t, cpus in before.items():
        try:
            os.sched_setaffinity(t, cpus)
        except OSError:
            pass


several_cpus = pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                                  reason="threads are placed on Linux with two CPUs or more")


@pytest.fixture
def kernel(checkpoint):
    """The trained tiny model's kernel."""
    return Engine.open(checkpoint).kernel


class ThreadBound:
    """A stand-in kernel whose logits are its number of threads: a product that sums in
    a different order on more threads, made obvious."""

    device = torch.device("cpu")
    vocab_size = 3

    def rows(self, n: int) -> int:
        return n

    def zero_state(self, rows: int) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, rows, 2),)

    def step(self, tokens: torch.Tensor, state) -> torch.Tensor:
        return torch.full((len(tokens), self.vocab_size), float(torch.get_num_threads()))


def test_steps_take_one_thread_while_commands_arrive_then_all_again(kernel):
    threads = Threads(2, kernel)
    if not threads.varies:
        pytest.skip("this machine's products give other bits on one thread than on two for this model")
    threads.fit()
    assert torch.get_num_threads() == 2
    threads.heard()
    threads.fit()
    assert torch.get_num_threads() == 1
    time.sleep(ARRIVALS_S * 1.5)
    threads.fit()
    assert torch.get_num_threads() == 2


@several_cpus
def test_threads_python_did_not_start_are_kept_off_the_callers_cpu(workers):
    assert workers, "a product on two threads started no worker"
    mine = os.sched_getaffinity(0)
    assert clear_of_this_cpu()
    for t in workers:
        cpus = os.sched_getaffinity(t)
        assert cpus < mine and len(cpus) == len(mine) - 1  # every CPU but one: the caller's then
    assert os.sched_getaffinity(0) == mine  # Python's own threads stay where they may


@several_cpus
def test_taking_back_threads_places_them_off_the_loops_cpu(kernel, workers):
    threads = Threads(2, kernel)
    if not threads.varies:
        pytest.skip("this machine's products give other bits on one thread than on two for this model")
    threads.heard()
    threads.fit()
    mine = os.sched_getaffinity(0)
    for t in workers:
        os.sched_setaffinity(t, mine)
    time.sleep(ARRIVALS_S * 1.5)
    threads.fit()  # one thread -> two
    assert all(len(os.sched_getaffinity(t)) == len(mine) - 1 for t in workers)


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bfloat16 products")
def test_bfloat16_steps_give_the_same_bits_on_any_number_of_threads(kernel):
    assert kernel.mm_dtype is torch.bfloat16
    assert same_bits(kernel, 3, (1, 8, 64), fewer=(1, 2))
    assert torch.get_num_threads() == 3  # left on the threads asked about


def test_a_kernel_whose_bits_depend_on_its_threads_keeps_all_of_them():
    assert not same_bits(ThreadBound(), 2, (1, 8))
    threads = Threads(2, ThreadBound())
    assert not threads.varies
    threads.heard()
    threads.fit()
    assert torch.get_num_threads() == 2


def test_one_thread_has_nothing_to_vary(kernel):
    assert not Threads(1, kernel).varies


def test_steps_on_another_device_are_not_compared():
    assert not same_bits(SimpleNamespace(device=torch.device("meta")), 2, (1,))


def test_engines_divide_the_threads_among_those_with_work(kernel):
    """Lent on the fly, where every count gives the same bits."""
    threads = Threads(2, kernel, engines=2)
    if not threads.varies:
        pytest.skip("this machine's products give other bits on one thread than on two for this model")
    assert threads.counts == (1, 2) and threads.share == 2
    threads.lend(1)
    threads.fit()
    assert torch.get_num_threads() == 1
    threads.lend(8)  # never more than it was given
    threads.fit()
    assert torch.get_num_threads() == 2


def test_engines_whose_bits_depend_on_their_threads_keep_their_part():
    fixed = Threads(2, ThreadBound(), engines=2)
    assert not fixed.varies and fixed.counts == (1,)
    fixed.lend(2)
    fixed.heard()
    fixed.fit()
    assert torch.get_num_threads() == 1
