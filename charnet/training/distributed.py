"""Process-group plumbing for `torchrun`: one process per device, DDP, gloo or NCCL.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op and
training runs as one process.

Only DDP's gradient all-reduce runs on the training backend (NCCL on CUDA). Everything
else here (stop decisions, the clock, losses, checkpoint state) is a few bytes per step
and goes through a gloo group on CPU tensors, for two reasons: a CUDA tensor read back
for a decision would stall the GPU every step, and NCCL cannot reduce CPU tensors.
"""

from __future__ import annotations

import gc
import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from charnet.errors import PeerFailed


@dataclass(frozen=True)
class Dist:
    """This process' place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None
    """The gloo group for CPU collectives; None means the default group (already gloo)."""

    @property
    def main(self) -> bool:
        """Only the main process writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def _reduce(self, values: list[float], op) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=op, group=self.group)
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        """Elementwise sums over all processes (in float64, so character counts stay exact)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        """Elementwise maxima over all processes. Every decision the loop takes (stop,
        the learning rate from the clock) must be the same on every process: one that
        stops while the others step leaves them waiting forever in DDP's all-reduce,
        and different learning rates would make the replicas drift apart."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def gather(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """Concatenate every process' `tensor` along `dim`, in rank order, on the CPU."""
        tensor = tensor.detach().to("cpu").contiguous()
        if not self.active:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor, group=self.group)
        return torch.cat(parts, dim)

    def on_main(self, action: Callable[[], Any]) -> None:
        """Run `action` (a save, a log write) on the main process only, and return on
        every process once it is done. If it failed there, every process raises: the
        main one its own error, the others `PeerFailed`, so a refused --out or a full
        disk ends the whole job cleanly instead of leaving the other processes blocked
        in their next collective (or exiting early, which makes torchrun kill the main
        process mid-write)."""
        error: BaseException | None = None
        if self.main:
            try:
                action()
            except Exception as e:  # noqa: BLE001  (re-raised below, after telling the others)
                error = e
        if self.active:
            message = [None if error is None else (str(error) or type(error).__name__)]
            dist.broadcast_object_list(message, src=0, group=self.group)
            if not self.main and message[0] is not None:
                raise PeerFailed(message[0])
        if error is not None:
            raise error


def from_env(device: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment, if any: NCCL with
    one GPU per process when training on CUDA, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    # torch.distributed.nn.functional's collectives take `group=group.WORLD` as a default,
    # evaluated when it is first imported, which DDP's constructor does. Imported after
    # the group exists, it holds the group for good: destroy_process_group() then leaves
    # its gloo threads running into interpreter exit, where tearing them down aborts the
    # process now and then (SIGABRT, "terminate called without an active exception") after
    # the run has finished. Imported first, its defaults are None.
    importlib.import_module("torch.distributed.nn.functional")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return Dist(rank, world, local_rank, group)


def shutdown() -> None:
    """Leave the process group, and end its threads. Whatever still holds it (a DDP
    wrapper, through a reference cycle; see also `from_env`) must be collected first:
    left to interpreter exit, the group's gloo threads are destroyed out of order and
    abort the process (SIGABRT, "terminate called without an active exception") instead
    of letting it exit with its code."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
