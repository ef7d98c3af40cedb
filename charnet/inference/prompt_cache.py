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
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from torch import Tensor

BLOCK = 64
"""Priming stores the state every this many tokens of a prompt."""

DEFAULT_MAX_BYTES = 64 << 20


@dataclass
class _Entry:
    state: tuple[Tensor, ...]  # each (L, 1, H)
    logits: Tensor  # (V,)
    nbytes: int


class PromptCache:
    """LRU map from token-id prefixes to (state, next logits), at most `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.primed_tokens = 0
        """Tokens actually run through the model while priming (what hits save)."""
        self._entries: OrderedDict[tuple[int, bytes], _Entry] = OrderedDict()
        self._lengths: dict[int, int] = {}  # prefix length -> entries of that length

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def digests(ids: np.ndarray, lengths: list[int]) -> dict[int, bytes]:
        """Digest of ids[:n] for every n in `lengths` (ascending), in one pass."""
        h = hashlib.blake2b(digest_size=16)
        out, prev = {}, 0
        for n in lengths:
            h.update(ids[prev:n].tobytes())
            out[n], prev = h.copy().digest(), n
        return out

    def lookup(self, ids: np.ndarray) -> tuple[int, _Entry | None]:
        """The longest cached prefix of `ids`: (its length, entry), or (0, None)."""
        candidates = sorted(n for n in self._lengths if n <= len(ids))
        digests = self.digests(ids, candidates)
        for n in reversed(candidates):
            entry = self._entries.get((n, digests[n]))
            if entry is not None:
                self._entries.move_to_end((n, digests[n]))
                return n, entry
        return 0, None

    def put(self, ids: np.ndarray, state: tuple[Tensor, ...], logits: Tensor, digest: bytes | None = None) -> None:
        """Remember the state after `ids` and the logits that follow (copies them)."""
        if self.max_bytes <= 0 or len(ids) == 0:
            return
        key = (len(ids), digest or self.digests(ids, [len(ids)])[len(ids)])
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        state = tuple(s.detach().clone() for s in state)
        logits = logits.detach().clone()
        nbytes = sum(s.numel() * s.element_size() for s in state) + logits.numel() * logits.element_size()
        self._entries[key] = _Entry(state, logits, nbytes)
        self._lengths[key[0]] = self._lengths.get(key[0], 0) + 1
        self.bytes += nbytes
        while self.bytes > self.max_bytes and self._entries:
            (n, _), old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            self._lengths[n] -= 1
            if not self._lengths[n]:
                del self._lengths[n]

    @staticmethod
    def marks(start: int, n: int) -> list[int]:
        """Lengths at which priming from `start` to `n` caches a state: every BLOCK, and n."""
        return sorted({*range((start // BLOCK + 1) * BLOCK, n, BLOCK), n})
