"""The prompt-state cache: recurrent states after recently seen prompts, LRU, bounded in bytes.

A recurrent model's whole context is its fixed-size state, so the state after a prompt
is a few kilobytes however long the prompt was (a transformer's KV cache grows with
every token). Keeping the states of recent prompts lets a request whose prompt extends
one of them (a chat that sends its history again, a shared preamble) prime only the
characters that are new.

Entries are keyed by the exact token ids they follow. Priming (`charnet.inference.batch`) stores an
entry at every `BLOCK` tokens from the start of a prompt and at its end (`marks`), so
prompts that share a preamble but then differ still find it; a finished generation
stores the state after its prompt and continuation. Priming in pieces yields
bit-identical states to priming whole (the kernel uses the same arithmetic either way),
so a hit changes speed, never output.

Entries live in one block of memory, a row each (as an inference server keeps its KV
cache in blocks allocated once): the cache holds exactly `max_bytes` // (bytes of an
entry) entries, with no allocation or tensor object per entry (an index of about 200
bytes an entry is all it adds). Its pages are taken as the cache fills, or all at once
by `reserve` (the server does, so its memory under load is the memory it starts with:
with a tensor and its bookkeeping per entry, the engine process had grown 68 MiB in a
64-client soak while the cache's entries grew by 46 MiB).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

BLOCK = 64
"""Priming stores the state every this many tokens of a prompt."""

DEFAULT_MAX_BYTES = 64 << 20


class Entry(NamedTuple):
    """A cached state: views into the cache's memory, valid until its next `put`."""

    state: tuple[Tensor, ...]  # as `StepKernel.zero_state(1)`
    logits: Tensor  # (V,)


class PromptCache:
    """LRU map from token-id prefixes to (state, next logits), in at most `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.primed_tokens = 0
        """Tokens actually run through the model while priming (what hits save)."""
        # A prefix's digest (`digests`: prefixes of different lengths differ) -> its row of
        # _rows, oldest first; and the prefix length each row holds.
        self._slots: OrderedDict[bytes, int] = OrderedDict()
        self._length: list[int] = []
        self._lengths: dict[int, int] = {}  # prefix length -> entries of that length
        self._rows: Tensor | None = None  # (capacity, floats of an entry), made by the first put
        self._shapes: tuple[torch.Size, ...] = ()  # of an entry's state tensors, then its logits
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def bytes(self) -> int:
        """Bytes of the entries held."""
        return 0 if self._rows is None else len(self._slots) * self._rows.shape[1] * self._rows.element_size()

    def reserve(self, state: tuple[Tensor, ...], logits: Tensor) -> None:
        """Take the cache's whole memory now, for entries shaped like `state` and
        `logits`, every page written (a process's memory then stays what it is as the
        cache fills)."""
        if self.max_bytes > 0:
            self._allocate(state, logits)
            self._rows.zero_()

    def _allocate(self, state: tuple[Tensor, ...], logits: Tensor) -> None:
        if self._rows is not None:
            return
        self._shapes = (*(s.shape for s in state), logits.shape)
        width = sum(shape.numel() for shape in self._shapes)
        capacity = self.max_bytes // (4 * width)
        self._rows = torch.empty(capacity, width, device=logits.device)  # untouched pages take no memory
        self._free = list(range(capacity - 1, -1, -1))
        self._length = [0] * capacity

    @staticmethod
    def digests(ids: np.ndarray, lengths: list[int]) -> dict[int, bytes]:
        """Digest of ids[:n] for every n in `lengths` (ascending), in one pass."""
        h = hashlib.blake2b(digest_size=16)
        out, prev = {}, 0
        for n in lengths:
            h.update(ids[prev:n].tobytes())
            out[n], prev = h.copy().digest(), n
        return out

    def lookup(self, ids: np.ndarray) -> tuple[int, Entry | None]:
        """The longest cached prefix of `ids`: (its length, entry), or (0, None)."""
        candidates = sorted(n for n in self._lengths if n <= len(ids))
        digests = self.digests(ids, candidates)
        for n in reversed(candidates):
            slot = self._slots.get(digests[n])
            if slot is not None:
                self._slots.move_to_end(digests[n])
                *state, logits = self._views(slot)
                return n, Entry(tuple(state), logits)
        return 0, None

    def _views(self, slot: int) -> list[Tensor]:
        row, views, at = self._rows[slot], [], 0
        for shape in self._shapes:
            views.append(row[at:at + shape.numel()].view(shape))
            at += shape.numel()
        return views

    def put(self, ids: np.ndarray, state: tuple[Tensor, ...], logits: Tensor, digest: bytes | None = None) -> None:
        """Remember the state after `ids` and the logits that follow (copies them),
        forgetting the least recently used entry when the cache is full."""
        if self.max_bytes <= 0 or len(ids) == 0:
            return
        n = len(ids)
        key = digest or self.digests(ids, [n])[n]
        if key in self._slots:
            self._slots.move_to_end(key)
            return
        self._allocate(state, logits)
        if not self._free:
            if not self._slots:  # max_bytes holds not even one entry
                return
            _, old = self._slots.popitem(last=False)
            self._free.append(old)
            self._lengths[self._length[old]] -= 1
            if not self._lengths[self._length[old]]:
                del self._lengths[self._length[old]]
        slot = self._free.pop()
        for view, tensor in zip(self._views(slot), (*state, logits)):
            view.copy_(tensor)
        self._slots[key] = slot
        self._length[slot] = n
        self._lengths[n] = self._lengths.get(n, 0) + 1

    @staticmethod
    def marks(start: int, n: int) -> list[int]:
        """Lengths at which priming from `start` to `n` caches a state: every BLOCK, and n."""
        return sorted({*range((start // BLOCK + 1) * BLOCK, n, BLOCK), n})
