"""`charnet.inference.sampling.choose`, compiled: every row's next token in one call (numba).

For a character model the distribution a step samples from has a few dozen to a few
hundred entries, and `choose` spends its time in a dozen small PyTorch calls per step,
each a few microseconds of dispatch: for one stream, more than the step's matrix
products. Here the same controls run in one compiled loop over the rows, in the same
order (the `charnet.inference.sampling` docstring): logit bias, the repetition, frequency
and presence penalties, the constraint's mask, greedy rows, temperature, the filters
top-k, top-p, min-p and typical-p, and a draw by inverse CDF in float64 in vocabulary
order, with the same SplitMix64 uniforms.

The arithmetic is the PyTorch path's, step for step, except the softmax's exponentials
(the C library's against PyTorch's vectorised ones) and the order of its sums, which
differ in the last bit: a draw can differ from the fallback's only when it falls within
float rounding of a boundary between two characters. Within this path, a row's token
depends on nothing but its own logits, settings, seed and step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import Tensor

from charnet.inference.fused_cells import JIT
from charnet.inference.sampling import MAX_BIAS, BatchParams


@njit(inline="always", **JIT)
def _uniform(seed, step):
    """`charnet.inference.sampling.uniform` for one (seed, step): SplitMix64, [0, 1)."""
    z = (seed * np.uint64(0x9E3779B97F4A7C15)) ^ (step + np.uint64(0xD1B54A32D192ED03))
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(**JIT)
def _choose(logits, rows, unk, temperature, top_k, top_p, min_p, typical_p, penalty, frequency, presence, greedy,
            bias, recent, counts, allowed, seeds, steps, out):
    vocab = logits.shape[1]
    neg_inf = np.float32(-np.inf)
    model = np.empty(vocab, np.float32)
    work = np.empty(vocab, np.float32)
    probs = np.empty(vocab, np.float32)
    keep = np.empty(vocab, np.bool_)
    cdf = np.empty(vocab, np.float64)
    for i in range(rows.shape[0]):
        row = rows[i]
        for v in range(vocab):
            model[v] = logits[row, v]
        if unk >= 0:  # the unknown id stands for characters the model never saw: not one to write
            model[unk] = neg_inf
        for v in range(vocab):
            work[v] = model[v]
        if bias.shape[0]:
            for v in range(vocab):
                work[v] = work[v] + bias[i, v]
        if penalty[i] != 1.0 and recent.shape[0]:
            p = penalty[i]
            for v in range(vocab):
                if recent[row, v] > 0:
                    work[v] = work[v] / p if work[v] > 0 else work[v] * p
        if (frequency[i] != 0.0 or presence[i] != 0.0) and counts.shape[0]:
            for v in range(vocab):
                c = counts[row, v]
                work[v] = (work[v] - c * frequency[i]) - (np.float32(1.0) if c > 0 else np.float32(0.0)) * presence[i]
        if allowed.shape[0]:
            for v in range(vocab):
                if not allowed[i, v]:
                    work[v] = neg_inf
        dead = True
        for v in range(vocab):
            if work[v] != neg_inf:
                dead = False
                break
        if dead and bias.shape[0]:
            # A bias that leaves nothing gives way: the model under its constraint alone.
            for v in range(vocab):
                work[v] = model[v] if not allowed.shape[0] or allowed[i, v] else neg_inf
        best = 0
        for v in range(1, vocab):
            if work[v] > work[best]:
                best = v
        if greedy[i]:
            out[i] = best
            continue
        # softmax(work / temperature)
        t = temperature[i]
        top = neg_inf
        for v in range(vocab):
            work[v] = work[v] / t
            top = max(top, work[v])
        total = np.float32(0.0)
        for v in range(vocab):
            probs[v] = np.exp(work[v] - top)
            total += probs[v]
        for v in range(vocab):
            probs[v] = probs[v] / total
        if top_k[i] < vocab or top_p[i] < 1.0 or min_p[i] > 0.0 or typical_p[i] < 1.0:
            _keep(probs, top_k[i], top_p[i], min_p[i], typical_p[i], keep)
            for v in range(vocab):
                if not keep[v]:
                    probs[v] = 0.0
        acc = 0.0
        for v in range(vocab):
            acc += np.float64(probs[v])
            cdf[v] = acc
        target = _uniform(seeds[i], steps[i]) * cdf[vocab - 1]
        token = np.searchsorted(cdf, target, side="right")
        out[i] = min(token, vocab - 1)


@njit(**JIT)
def _keep(probs, top_k, top_p, min_p, typical_p, keep):
    """`charnet.inference.sampling.keep_mask` for one row."""
    vocab = probs.shape[0]
    order = np.argsort(-probs, kind="mergesort")  # descending, ties in vocabulary order (stable)
    first = probs[order[0]]
    acc = 0.0
    for rank in range(vocab):
        v = order[rank]
        p = probs[v]
        before = np.float32(acc + np.float64(p)) - p  # the float32 cumulative sum, less this one
        acc += np.float64(p)
        keep[v] = rank == 0 or (rank < top_k and before < top_p and p >= min_p * first)
    if typical_p < 1.0:
        entropy = np.float32(0.0)
        surprise = np.empty(vocab, np.float32)
        for v in range(vocab):
            lp = np.log(probs[v])
            surprise[v] = lp
            if probs[v] > 0:
                entropy += probs[v] * lp
        entropy = -entropy
        distance = np.empty(vocab, np.float32)
        for v in range(vocab):
            distance[v] = abs(-surprise[v] - entropy) if probs[v] > 0 else np.float32(np.inf)
        near = np.argsort(distance, kind="mergesort")
        acc = 0.0
        for rank in range(vocab):
            v = near[rank]
            p = probs[v]
            before = np.float32(acc + np.float64(p)) - p
            acc += np.float64(p)
            if not (before < typical_p or v == order[0]):
                keep[v] = False


_EMPTY2 = np.zeros((0, 0), np.float32)
_NONE_ALLOWED = np.zeros((0, 0), np.bool_)


def choose(logits: Tensor, rows: np.ndarray, params: BatchParams, seeds: np.ndarray, steps: np.ndarray,
           unk: int | None, recent: Tensor | None = None, counts: Tensor | None = None,
           allowed: Tensor | None = None) -> np.ndarray:
    """Next token ids of the sampling rows `rows` of the batch's `logits` (R, V), with
    `params`, `allowed` and the uniforms' `seeds` and `steps` given per sampling row;
    `recent` and `counts` (R, V) are the batch's. `unk`: the unknown id, never chosen."""
    arrays = params.arrays()
    out = np.empty(len(rows), dtype=np.int64)
    _choose(logits.numpy(), rows, -1 if unk is None else unk, *arrays,
            _EMPTY2 if params.bias is None else params.bias.numpy(),
            _EMPTY2 if recent is None else recent.numpy(), _EMPTY2 if counts is None else counts.numpy(),
            _NONE_ALLOWED if allowed is None else allowed.numpy(), seeds, steps, out)
    return out
