"""How many torch threads an engine process steps on: its share of those it was given
(all of them while the model's other engine processes are idle), but one while requests
arrive, where its model's steps give the same bits either way; and where the threads it
takes back wake (`clear_of_this_cpu`)."""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time

import torch

from charnet.inference.kernel import StepKernel

ARRIVALS_S = 0.005
"""For this long after commands arrive, the engine steps on one torch thread
(`Threads`)."""


class Threads:
    """The engine's torch threads: its share of those it was given (`lend`), but only
    one while requests arrive, where the kernel's steps give the same bits on every
    count it may take (`same_bits`); elsewhere always the same count, `most` divided
    among the model's engines.

    Commands come from the API process's event loop, which holds a core while it reads,
    validates and answers requests. A step on two threads then puts one of them on that
    core, at lower priority (`charnet.server.core.process.NICENESS`), and every product
    waits for it at a barrier: at 64 simultaneous arrivals on 2 cores a one-row step
    took 28 ms instead of 0.3. Stepping on one thread until `ARRIVALS_S` after the last
    command, in three paired runs: time to first character at 64 clients p99 52-58 ->
    31-43 ms, p50 43-47 -> 28-31 ms, at one client p50 7-11 -> 4 ms; characters per
    second -6% to +1% (within the runs' spread). A request's text must not depend on
    when others arrive, so this is done only where one thread and all of them give the
    same bits: bfloat16 products (oneDNN divides a product's outputs among threads,
    never its sums) on 1 to 4 threads, float32 ones on 1 and 2 but not 3 or 4 for some
    shapes (a Zen 4)."""

    def __init__(self, most: int, kernel: StepKernel, batches: tuple[int, ...] = (1, 8, 64),
                 engines: int = 1) -> None:
        """`most`: the threads of the process; `batches`: the batch sizes `same_bits`
        tries; `engines`: the model's engine processes, which divide the threads among
        those with work (`lend`)."""
        self.most = most
        counts = sorted({1} | {max(1, most // k) for k in range(1, engines + 1)})  # one, each share, most
        self.varies = most > 1 and same_bits(kernel, most, batches, tuple(counts[:-1]))
        """Whether steps move between thread counts (one, a share, `most`)."""
        self.share = most if self.varies else max(1, most // engines)
        """The threads steps take when no command has just arrived."""
        self._shares = counts if self.varies else [self.share]
        self._heard = -math.inf
        self._set: int | None = None  # what `fit` last gave torch

    @property
    def counts(self) -> tuple[int, ...]:
        """The thread counts steps run on, `most` (or the fixed share) last."""
        return tuple(self._shares)

    def lend(self, threads: int) -> None:
        """Step on `threads` from now on (the most of the counts checked that is not
        more), where steps may move."""
        if self.varies:
            self.share = max(t for t in self._shares if t <= max(1, threads))

    def heard(self) -> None:
        """Commands have just arrived."""
        self._heard = time.monotonic()

    def fit(self) -> None:
        """Set torch's threads for the next step (the loop's thread alone sets them, so
        asking torch each round is not needed)."""
        want = 1 if self.varies and time.monotonic() - self._heard < ARRIVALS_S else self.share
        if want != self._set:
            if want > (self._set or 1):
                clear_of_this_cpu()
            torch.set_num_threads(want)
            self._set = want


_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def clear_of_this_cpu() -> bool:
    """Keep the process's threads that Python did not start (torch's OpenMP workers) off
    the CPU this thread runs on, so that those a step wakes run beside it; whether it
    could (Linux, more than one CPU allowed).

    Why: a worker asleep (through the one-thread window, or while the engine was idle) is
    woken by the loop's thread, and Linux may queue it on the waker's own CPU while the
    other is idle. The two then take turns on one CPU, each spinning at the product's
    barrier for a whole time slice (4 ms) while the other waits, until the scheduler
    moves one. Traced (`perf sched`, Linux 6.18, a 2-core virtual machine): at one
    client, 4 requests in 16 lost 12-15 ms in the one step that ended their one-thread
    window; with this, none of 16 had a step over 1.5 ms. Paired runs of 12 bursts of 64
    clients: p99 time to first character 50.9 -> 42.0 ms and 53.7 -> 48.5 ms.
    """
    if _LIBC is None:  # not Linux, where os.sched_setaffinity and sched_getcpu both exist
        return False
    others = os.sched_getaffinity(0) - {_LIBC.sched_getcpu()}
    if not others:
        return False
    ours = {t.native_id for t in threading.enumerate()}
    for task in os.listdir("/proc/self/task"):
        if int(task) not in ours:
            try:
                os.sched_setaffinity(int(task), others)
            except OSError:  # it has exited since
                pass
    return True


def same_bits(kernel: StepKernel, threads: int, batches: tuple[int, ...], fewer: tuple[int, ...] = (1,),
              steps: int = 3) -> bool:
    """Whether `kernel` computes the same bits on each of the `fewer` torch thread counts
    as on `threads`, for batches of each of these sizes, from a random state (a
    product's order of sums depends on its shape and the threads, not on its values).
    The steps on `threads` run once, and every count is compared with them. Leaves torch
    on `threads`."""
    if kernel.device.type != "cpu":
        return False  # CPU threads do not run its steps
    g = torch.Generator().manual_seed(0)

    def run(count: int, start: tuple[torch.Tensor, ...], tokens: torch.Tensor) -> list[torch.Tensor]:
        torch.set_num_threads(count)
        state = tuple(s.clone() for s in start)
        return [kernel.step(x, state).clone() for x in tokens] + list(state)

    try:
        for rows in sorted({kernel.rows(n) for n in batches}):
            start = tuple(torch.randn(s.shape, generator=g).to(s.dtype) for s in kernel.zero_state(rows))
            tokens = torch.randint(0, kernel.vocab_size, (steps, rows), generator=g)
            reference = run(threads, start, tokens)
            for count in fewer:
                if not all(torch.equal(a, b) for a, b in zip(run(count, start, tokens), reference)):
                    return False
        return True
    finally:
        torch.set_num_threads(threads)
