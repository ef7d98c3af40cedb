"""The prompt-state cache: recurrent states after recently seen prompts, LRU, bounded in bytes.

A recurrent model's whole context is its fixed-size state, so the state after a prompt
is a few kilobytes however long the prompt was (a transformer's KV cache grows with
every token). Keeping the states of recent prompts lets a request whose prompt extends
one of them (a chat that sends its history again, a shared preamble) prime only the
characters that are new.

Entries are keyed by the exact token ids they follow. Priming stores an entry every
`BLOCK` tokens and at the end of the prompt, so prompts that share a preamble but then
differ still find it; a finished generation stores the state after its prompt and
continuation. Priming in pieces yields bit-identical states to priming whole (the
kernel uses the same arithmetic either way), so a hit changes speed, never output.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from charnet.kernel import StepKernel

BLOCK = 64
"""Priming stores the state every this many tokens of a prompt."""

DEFAULT_MAX_BYTES = 64 << 20

LOCKSTEP_MAX = 256
"""Prompts with at most this many tokens left to prime prime together in lockstep;
longer ones prime alone, so one long prompt does not hold up a burst of short ones."""


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
    def _digests(ids: np.ndarray, lengths: list[int]) -> dict[int, bytes]:
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
        digests = self._digests(ids, candidates)
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
        key = (len(ids), digest or self._digests(ids, [len(ids)])[len(ids)])
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
    def _marks(start: int, n: int) -> list[int]:
        """Lengths at which priming from `start` to `n` caches a state: every BLOCK, and n."""
        return sorted({*range((start // BLOCK + 1) * BLOCK, n, BLOCK), n})

    def prime(self, kernel: StepKernel, ids: np.ndarray) -> tuple[tuple[Tensor, ...], Tensor]:
        """The state after `ids` and the next logits, priming only what no cached
        prefix covers, and caching the states on the way."""
        return self._prime_from(kernel, ids, *self.lookup(ids))

    def _prime_from(self, kernel: StepKernel, ids: np.ndarray, start: int,
                    entry: _Entry | None) -> tuple[tuple[Tensor, ...], Tensor]:
        """`prime`, given `lookup`'s answer for `ids`."""
        self.hits += entry is not None
        self.misses += entry is None
        if entry is not None and start == len(ids):
            return tuple(s.clone() for s in entry.state), entry.logits.clone()
        state = tuple(s.clone() for s in entry.state) if entry is not None else kernel.zero_state(1)
        ends = self._marks(start, len(ids))
        digests = self._digests(ids, ends)
        ids_t = torch.as_tensor(ids.astype(np.int64), device=kernel.device)
        logits = None
        for end in ends:
            logits = kernel.prime(ids_t[start:end], state)
            self.primed_tokens += end - start
            self.put(ids[:end], state, logits, digests[end])
            start = end
        return state, logits

    def prime_many(self, kernel: StepKernel, prompts: list[np.ndarray]) -> list[tuple[tuple[Tensor, ...], Tensor]]:
        """`prime` for several prompts: the (state, logits) after each. Those with a
        short stretch left to prime advance together, one token per batched kernel
        step, each from its longest cached prefix; a row computes what it would alone
        (see `charnet.kernel`), so the results equal priming each prompt by itself."""
        if len(prompts) == 1:
            return [self.prime(kernel, prompts[0])]
        results: list = [None] * len(prompts)
        rows = []  # (index, ids, start, cached state or None)
        for i, ids in enumerate(prompts):
            start, entry = self.lookup(ids)
            if len(ids) - start > LOCKSTEP_MAX or (entry is not None and start == len(ids)):
                results[i] = self._prime_from(kernel, ids, start, entry)
                continue
            self.hits += entry is not None
            self.misses += entry is None
            rows.append((i, ids, start, entry))
        if rows:
            self._lockstep(kernel, rows, results)
        return results

    def _lockstep(self, kernel: StepKernel, rows: list, results: list) -> None:
        n = len(rows)
        state = kernel.zero_state(kernel.rows(n))
        steps = max(len(ids) - start for _, ids, start, _ in rows)
        tokens = np.zeros((steps, state[0].shape[1]), dtype=np.int64)  # padding rows and tails feed id 0
        ends: list[dict[int, bytes]] = []
        for r, (_, ids, start, entry) in enumerate(rows):
            if entry is not None:
                for dst, src in zip(state, entry.state):
                    dst[:, r] = src[:, 0]
            tokens[: len(ids) - start, r] = ids[start:]
            ends.append(self._digests(ids, self._marks(start, len(ids))))
            self.primed_tokens += len(ids) - start
        tokens_t = torch.from_numpy(tokens).to(kernel.device)
        for t in range(steps):
            logits = kernel.step(tokens_t[t], state)
            for r, (i, ids, start, _) in enumerate(rows):
                end = start + t + 1
                if end in ends[r]:
                    row_state = tuple(s[:, r:r + 1] for s in state)
                    self.put(ids[:end], row_state, logits[r], ends[r][end])
                    if end == len(ids):
                        results[i] = (tuple(s.clone() for s in row_state), logits[r].clone())
