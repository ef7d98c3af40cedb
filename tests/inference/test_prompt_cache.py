"""The prompt-state cache on its own: exactly as many entries as its bytes hold, least
recently used out first, what comes back is what went in, and its memory taken either
as it fills or all at once by `reserve`."""

from __future__ import annotations

import os

import numpy as np
import torch

from charnet.inference.prompt_cache import PromptCache

LAYERS, HIDDEN, VOCAB = 2, 512, 84  # the bundled model's shape
ENTRY_BYTES = 4 * (2 * LAYERS * HIDDEN + VOCAB)  # an LSTM's h and c, and the logits


def entry(seed: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # rows of a batch's (L, R, H) state, as the batch hands them over: not contiguous
    batch_state = tuple(torch.randn(LAYERS, 5, HIDDEN, generator=g) for _ in range(2))
    return tuple(t[:, 3:4] for t in batch_state), torch.randn(VOCAB, generator=g)


def ids(i: int) -> np.ndarray:
    return np.array([7, i, i + 1], dtype=np.uint32)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_entries_come_back_as_they_went_in_and_the_oldest_go_first():
    cache = PromptCache(max_bytes=10 * ENTRY_BYTES + ENTRY_BYTES // 2)  # room for 10
    for i in range(10):
        cache.put(ids(i), *entry(i))
    assert len(cache) == 10 and cache.bytes == 10 * ENTRY_BYTES
    assert cache.lookup(ids(0))[0] == 3  # used: now the newest
    cache.put(ids(10), *entry(10))
    assert len(cache) == 10 and cache.bytes <= cache.max_bytes
    assert cache.lookup(ids(1)) == (0, None)  # the least recently used went
    for i in (0, *range(2, 11)):
        n, got = cache.lookup(ids(i))
        state, logits = entry(i)
        assert n == 3 and torch.equal(got.logits, logits) and all(torch.equal(a, b) for a, b in zip(got.state, state))
        assert got.state[0].shape == (LAYERS, 1, HIDDEN)


def test_longest_cached_prefix_wins():
    cache = PromptCache()
    prompt = np.arange(200, dtype=np.uint32)
    for n in (64, 128, 190):
        cache.put(prompt[:n], *entry(n))
    assert cache.lookup(prompt)[0] == 190 and cache.lookup(prompt[:150])[0] == 128
    assert cache.lookup(prompt[:63]) == (0, None)


def test_a_cache_too_small_for_one_entry_holds_nothing():
    for max_bytes in (0, ENTRY_BYTES - 4):
        cache = PromptCache(max_bytes=max_bytes)
        cache.put(ids(1), *entry(1))
        assert len(cache) == 0 and cache.bytes == 0 and cache.lookup(ids(1)) == (0, None)


def test_memory_is_taken_as_the_cache_fills_or_all_at_once_when_reserved():
    size = 64 << 20
    lazy = PromptCache(max_bytes=size)
    before = rss_bytes()
    lazy.put(ids(1), *entry(1))
    assert rss_bytes() - before < 8 << 20  # one entry, not the whole block
    reserved = PromptCache(max_bytes=size)
    before = rss_bytes()
    reserved.reserve(*entry(0))
    assert rss_bytes() - before > 0.9 * size
    before = rss_bytes()
    for i in range(size // ENTRY_BYTES + 100):  # fill it, and then some
        reserved.put(ids(i), *entry(i % 7))
    assert len(reserved) == size // ENTRY_BYTES and rss_bytes() - before < 4 << 20  # the index alone
