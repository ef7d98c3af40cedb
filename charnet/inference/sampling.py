"""Choosing the next character from logits: pure functions over (B, V) tensors.

Every control works per row, so one batch can hold requests with different settings:
repetition penalty, then temperature, then the filters top-k, top-p and min-p, each
judged on the same tempered distribution and intersected (the most likely token always
survives), then a draw by inverse CDF over the surviving tokens in vocabulary order.

Randomness is counter-based: the uniform number behind the draw at generation step t of
a sequence with seed s is ``uniform(s, t)``, a pure function (SplitMix64) of the two. No
generator state is shared between rows, so a sequence samples the same characters alone,
in any batch, or after a restart, and sample i of a request with seed s is exactly the
single run with seed ``s + i``.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from charnet.config import MAX_VOCAB
from charnet.errors import ConfigError

REPETITION_WINDOW = 64
"""Characters looked back at by the repetition penalty. Over a whole text nearly every
character has appeared; the recent window is what repetition means for characters."""


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one sequence chooses its characters."""

    temperature: float = 1.0
    """Divides the logits; 0 means greedy (always the most likely character)."""

    top_k: int = 0
    """Sample among the k most likely characters only; 0 turns it off. At most the
    vocabulary's size (checked against the model by `GenerationRequest.check_vocab`)."""

    top_p: float = 1.0
    """Sample among the most likely characters whose probabilities sum to at least p
    (nucleus sampling), in (0, 1]; 1 turns it off."""

    min_p: float = 0.0
    """Sample only among characters at least this fraction as likely as the most likely
    one (after temperature), in [0, 1]; 0 turns it off."""

    repetition_penalty: float = 1.0
    """Above 1 discourages characters among the last `REPETITION_WINDOW` (positive
    logits divided by it, negative ones multiplied, as in CTRL); 1 turns it off."""

    seed: int | None = None
    """Seed of the sequence's draws; None picks a random one (reported back)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError("temperature", f"must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or not 0 <= self.top_k <= MAX_VOCAB:
            raise ConfigError("top_k", f"must be an integer in [0, {MAX_VOCAB}], got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.min_p, (int, float)) and 0 <= self.min_p <= 1):
            raise ConfigError("min_p", f"must be in [0, 1], got {self.min_p!r}")
        if not (isinstance(self.repetition_penalty, (int, float)) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            raise ConfigError("repetition_penalty", f"must be a number > 0, got {self.repetition_penalty!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < 1 << 63):
            raise ConfigError("seed", f"must be an integer in [0, 2^63), got {self.seed!r}")

    def with_seed(self) -> SamplingParams:
        """These params with a concrete seed (a random one if none was given)."""
        # 53 bits: a seed handed back in JSON stays exact in every client, JavaScript's too.
        return self if self.seed is not None else dataclasses.replace(self, seed=secrets.randbits(53))


def derive_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a request with `seed`: ``seed + index``, so sample i
    of a batch equals the single run with that seed."""
    return (seed + index) % (1 << 63)


def uniform(seeds: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """One float64 in [0, 1) per row: SplitMix64 of (seed, step), vectorised."""
    with np.errstate(over="ignore"):
        z = (seeds.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (steps.astype(np.uint64) + np.uint64(0xD1B54A32D192ED03))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(kw_only=True)
class BatchParams:
    """`SamplingParams` of every row of a batch, as tensors."""

    temperature: Tensor  # (B, 1) float32
    top_k: Tensor  # (B, 1) int64, V where off
    top_p: Tensor  # (B, 1) float32
    min_p: Tensor  # (B, 1) float32
    penalty: Tensor  # (B, 1) float32
    greedy: Tensor  # (B,) bool
    any_penalty: bool
    any_filter: bool
    any_greedy: bool
    all_greedy: bool

    @classmethod
    def of(cls, params: list[SamplingParams], vocab_size: int, device: torch.device | str = "cpu") -> BatchParams:
        def col(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device).reshape(-1, 1)

        greedy = [p.temperature == 0 for p in params]
        return cls(
            temperature=col([p.temperature if p.temperature > 0 else 1.0 for p in params], torch.float32),
            top_k=col([p.top_k if p.top_k > 0 else vocab_size for p in params], torch.int64),
            top_p=col([p.top_p for p in params], torch.float32),
            min_p=col([p.min_p for p in params], torch.float32),
            penalty=col([p.repetition_penalty for p in params], torch.float32),
            greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            any_penalty=any(p.repetition_penalty != 1.0 for p in params),
            any_filter=any(0 < p.top_k < vocab_size or p.top_p < 1.0 or p.min_p > 0 for p in params),
            any_greedy=any(greedy),
            all_greedy=all(greedy),
        )


def apply_repetition_penalty(logits: Tensor, recent: Tensor, penalty: Tensor) -> Tensor:
    """CTRL's penalty on characters with ``recent > 0`` (counts over the window)."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(recent > 0, penalised, logits)


def keep_mask(probs: Tensor, params: BatchParams) -> Tensor:
    """Which tokens survive top-k, top-p and min-p, in vocabulary order (B, V) bool: the
    k most likely, the most likely whose mass before them is under p, and those at least
    min_p times as likely as the most likely. The most likely token always survives."""
    sorted_probs, ids = probs.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(probs.shape[-1], device=probs.device)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more likely tokens
    keep = (rank < params.top_k) & (before < params.top_p) & (sorted_probs >= params.min_p * sorted_probs[:, :1])
    keep[:, 0] = True
    return torch.zeros_like(keep).scatter_(1, ids, keep)


def draw(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw from unnormalised `probs` (B, V) with uniforms `u` (B,).

    The CDF runs in vocabulary order whatever the filters, so a row without filters
    draws the same token whether or not its batch needed them."""
    cdf = probs.double().cumsum(-1)
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)


def choose(logits: Tensor, params: BatchParams, u: np.ndarray, recent: Tensor | None = None) -> Tensor:
    """Next token ids (B,) from logits (B, V), row by row under `params`."""
    logits = logits.float()
    if params.any_penalty and recent is not None:
        logits = apply_repetition_penalty(logits, recent, params.penalty)
    greedy_ids = logits.argmax(-1) if params.any_greedy else None
    if params.all_greedy:
        return greedy_ids
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.any_filter:
        probs = probs * keep_mask(probs, params)
    sampled = draw(probs, torch.from_numpy(u))
    return torch.where(params.greedy, greedy_ids, sampled) if params.any_greedy else sampled
