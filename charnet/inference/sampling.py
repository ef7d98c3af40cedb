"""Choosing the next character from logits: pure functions over (B, V) tensors.

Every control works per row, so one batch can hold requests with different settings.
They apply in this order (`choose`):

1. ``logit_bias`` is added to the logits (-100 bans a character, +100 forces it: only
   the characters at +100 remain);
2. the repetition penalty (over the last `REPETITION_WINDOW` characters, prompt
   included), then ``frequency_penalty`` and ``presence_penalty`` (OpenAI's formula,
   over the generated characters only);
3. the constraint's mask (`charnet.inference.constraints`), given as ``allowed``: what
   the constraint cannot continue with is removed; greedy rows take the argmax here;
4. temperature;
5. the filters top-k, top-p, min-p and typical-p, each judged on the same tempered
   distribution and intersected (the most likely remaining character always survives);
6. a draw by inverse CDF over the survivors in vocabulary order.

Log-probabilities reported to clients are the model's own, before all of this.

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
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from charnet.config import MAX_VOCAB
from charnet.errors import ConfigError

REPETITION_WINDOW = 64
"""Characters looked back at by the repetition penalty. Over a whole text nearly every
character has appeared; the recent window is what repetition means for characters."""

MAX_BIAS = 100.0
"""``logit_bias`` values lie in [-MAX_BIAS, MAX_BIAS] (OpenAI's range); the ends ban and force."""

MAX_BIASED = 1024
"""Most characters one request may bias."""

MAX_PENALTY = 2.0
"""``presence_penalty`` and ``frequency_penalty`` lie in [-MAX_PENALTY, MAX_PENALTY] (OpenAI's range)."""

BiasKey = int | str
"""A token id, or (before `GenerationRequest.for_vocab` resolves it) one character."""


def _number(name: str, value: object, low: float, high: float, *, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (open_low and value == low):
        bounds = (f"{'>' if open_low else '>='} {low:g}" if high == math.inf
                  else f"in {'(' if open_low else '['}{low:g}, {high:g}]")
        raise ConfigError(name, f"must be a number {bounds}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one sequence chooses its characters (the module docstring gives the order in
    which the controls apply)."""

    temperature: float = 1.0
    """Divides the logits; 0 means greedy (always the most likely character)."""

    top_k: int = 0
    """Sample among the k most likely characters only; 0 turns it off. At most the
    vocabulary's size (checked against the model by `GenerationRequest.for_vocab`)."""

    top_p: float = 1.0
    """Sample among the most likely characters whose probabilities sum to at least p
    (nucleus sampling), in (0, 1]; 1 turns it off."""

    min_p: float = 0.0
    """Sample only among characters at least this fraction as likely as the most likely
    one (after temperature), in [0, 1]; 0 turns it off."""

    typical_p: float = 1.0
    """Locally typical sampling (Meister et al. 2022): keep the characters whose
    surprisal is closest to the distribution's entropy, as many as reach this mass, in
    (0, 1]; 1 turns it off."""

    repetition_penalty: float = 1.0
    """Above 1 discourages characters among the last `REPETITION_WINDOW` (positive
    logits divided by it, negative ones multiplied, as in CTRL); 1 turns it off."""

    frequency_penalty: float = 0.0
    """Subtracted from a character's logit once per time it has been generated
    (OpenAI's), in [-2, 2]; 0 turns it off."""

    presence_penalty: float = 0.0
    """Subtracted from the logit of every character generated at least once (OpenAI's),
    in [-2, 2]; 0 turns it off."""

    logit_bias: tuple[tuple[BiasKey, float], ...] = ()
    """Added to the logits of the characters it names, by token id or by the character
    itself (a mapping is accepted and stored as sorted pairs), in [-100, 100]: -100 bans
    a character, +100 forces it (several at +100: one of them)."""

    seed: int | None = None
    """Seed of the sequence's draws; None picks a random one (reported back)."""

    def __post_init__(self) -> None:
        _number("temperature", self.temperature, 0, math.inf)
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or not 0 <= self.top_k <= MAX_VOCAB:
            raise ConfigError("top_k", f"must be an integer in [0, {MAX_VOCAB}], got {self.top_k!r}")
        _number("top_p", self.top_p, 0, 1, open_low=True)
        _number("min_p", self.min_p, 0, 1)
        _number("typical_p", self.typical_p, 0, 1, open_low=True)
        _number("repetition_penalty", self.repetition_penalty, 0, math.inf, open_low=True)
        _number("frequency_penalty", self.frequency_penalty, -MAX_PENALTY, MAX_PENALTY)
        _number("presence_penalty", self.presence_penalty, -MAX_PENALTY, MAX_PENALTY)
        object.__setattr__(self, "logit_bias", _bias_pairs(self.logit_bias))
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < 1 << 63):
            raise ConfigError("seed", f"must be an integer in [0, 2^63), got {self.seed!r}")

    def with_seed(self) -> SamplingParams:
        """These params with a concrete seed (a random one if none was given)."""
        # 53 bits: a seed handed back in JSON stays exact in every client, JavaScript's too.
        return self if self.seed is not None else dataclasses.replace(self, seed=secrets.randbits(53))


def _bias_pairs(bias: Mapping[BiasKey, float] | tuple) -> tuple[tuple[BiasKey, float], ...]:
    items = list(bias.items() if isinstance(bias, Mapping) else bias)
    if len(items) > MAX_BIASED:
        raise ConfigError("logit_bias", f"may bias at most {MAX_BIASED} characters, got {len(items)}")
    for key, value in items:
        if isinstance(key, bool) or not (isinstance(key, int) and 0 <= key < MAX_VOCAB
                                         or isinstance(key, str) and len(key) == 1):
            raise ConfigError("logit_bias", f"keys are token ids or single characters, got {key!r}")
        _number("logit_bias", value, -MAX_BIAS, MAX_BIAS)
    return tuple(sorted(((k, float(v)) for k, v in items), key=lambda kv: (isinstance(kv[0], str), kv[0])))


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
    typical_p: Tensor  # (B, 1) float32
    penalty: Tensor  # (B, 1) float32, the repetition penalty
    frequency: Tensor  # (B, 1) float32
    presence: Tensor  # (B, 1) float32
    bias: Tensor | None  # (B, V) float32 added to the logits (-inf: banned), None when no row biases
    greedy: Tensor  # (B,) bool
    any_penalty: bool
    any_count_penalty: bool
    any_filter: bool
    any_typical: bool
    any_greedy: bool
    all_greedy: bool
    _arrays: tuple[np.ndarray, ...] | None = field(default=None, init=False, repr=False)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """temperature, top_k, top_p, min_p, typical_p, penalty, frequency, presence and
        greedy as 1-D arrays (views of CPU tensors; made once), as
        `charnet.inference.fused_sampling` reads them."""
        if self._arrays is None:
            columns = (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p, self.penalty,
                       self.frequency, self.presence, self.greedy)
            self._arrays = tuple(c.reshape(-1).numpy() for c in columns)
        return self._arrays

    @classmethod
    def of(cls, params: list[SamplingParams], vocab_size: int, device: torch.device | str = "cpu") -> BatchParams:
        """Every row's settings; `logit_bias` keys must be token ids below `vocab_size`
        by now (`GenerationRequest.for_vocab`)."""
        def col(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device).reshape(-1, 1)

        greedy = [p.temperature == 0 for p in params]
        return cls(
            temperature=col([p.temperature if p.temperature > 0 else 1.0 for p in params], torch.float32),
            top_k=col([p.top_k if p.top_k > 0 else vocab_size for p in params], torch.int64),
            top_p=col([p.top_p for p in params], torch.float32),
            min_p=col([p.min_p for p in params], torch.float32),
            typical_p=col([p.typical_p for p in params], torch.float32),
            penalty=col([p.repetition_penalty for p in params], torch.float32),
            frequency=col([p.frequency_penalty for p in params], torch.float32),
            presence=col([p.presence_penalty for p in params], torch.float32),
            bias=_bias_rows(params, vocab_size, device) if any(p.logit_bias for p in params) else None,
            greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            any_penalty=any(p.repetition_penalty != 1.0 for p in params),
            any_count_penalty=any(p.frequency_penalty or p.presence_penalty for p in params),
            any_filter=any(0 < p.top_k < vocab_size or p.top_p < 1.0 or p.min_p > 0 or p.typical_p < 1.0
                           for p in params),
            any_typical=any(p.typical_p < 1.0 for p in params),
            any_greedy=any(greedy),
            all_greedy=all(greedy),
        )


def _bias_rows(params: list[SamplingParams], vocab_size: int, device: torch.device | str) -> Tensor:
    bias = torch.zeros(len(params), vocab_size)
    for row, p in enumerate(params):
        forced = [i for i, v in p.logit_bias if v >= MAX_BIAS]
        for i, v in p.logit_bias:
            bias[row, i] = -math.inf if v <= -MAX_BIAS else v
        if forced:  # +100 leaves only the forced characters
            keep = torch.zeros(vocab_size, dtype=torch.bool)
            keep[forced] = True
            bias[row] = torch.where(keep, 0.0, -math.inf)
    return bias.to(device)


def apply_repetition_penalty(logits: Tensor, recent: Tensor, penalty: Tensor) -> Tensor:
    """CTRL's penalty on characters with ``recent > 0`` (counts over the window)."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(recent > 0, penalised, logits)


def apply_count_penalties(logits: Tensor, counts: Tensor, params: BatchParams) -> Tensor:
    """OpenAI's frequency and presence penalties, `counts` (B, V) being how often each
    character has been generated: ``logit - count * frequency - (count > 0) * presence``."""
    return logits - counts * params.frequency - (counts > 0).float() * params.presence


def keep_mask(probs: Tensor, params: BatchParams) -> Tensor:
    """Which tokens survive top-k, top-p, min-p and typical-p, in vocabulary order (B, V)
    bool: the k most likely; the most likely whose mass before them is under p; those at
    least min_p times as likely as the most likely; and those closest to the entropy
    whose mass before them (in that order) is under typical_p. The most likely token
    always survives."""
    sorted_probs, ids = probs.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(probs.shape[-1], device=probs.device)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more likely tokens
    keep = (rank < params.top_k) & (before < params.top_p) & (sorted_probs >= params.min_p * sorted_probs[:, :1])
    keep[:, 0] = True
    keep = torch.zeros_like(keep).scatter_(1, ids, keep)
    if params.any_typical:
        keep &= _typical(probs, params.typical_p) | (rank == ids[:, :1])
    return keep


def _typical(probs: Tensor, mass: Tensor) -> Tensor:
    logp = torch.log(probs)
    entropy = -(probs * torch.nan_to_num(logp, neginf=0.0)).sum(-1, keepdim=True)
    distance = torch.where(probs > 0, (-logp - entropy).abs(), math.inf)
    _, order = distance.sort(dim=-1, stable=True)
    sorted_probs = probs.gather(1, order)
    keep = (sorted_probs.cumsum(-1) - sorted_probs) < mass
    return torch.zeros_like(keep).scatter_(1, order, keep)


def draw(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw from unnormalised `probs` (B, V) with uniforms `u` (B,).

    The CDF runs in vocabulary order whatever the filters, so a row without filters
    draws the same token whether or not its batch needed them."""
    cdf = probs.double().cumsum(-1)
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)


def choose(logits: Tensor, params: BatchParams, u: np.ndarray, recent: Tensor | None = None,
           counts: Tensor | None = None, allowed: Tensor | None = None) -> Tensor:
    """Next token ids (B,) from logits (B, V), row by row under `params`, in the order
    the module docstring gives: `recent` holds each row's counts over the repetition
    window, `counts` its generated characters' counts, `allowed` (B, V) bool its
    constraint's mask (None: no row is constrained)."""
    model = logits = logits.float()
    if params.bias is not None:
        logits = logits + params.bias
    if params.any_penalty and recent is not None:
        logits = apply_repetition_penalty(logits, recent, params.penalty)
    if params.any_count_penalty and counts is not None:
        logits = apply_count_penalties(logits, counts, params)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, -math.inf)
    dead = torch.isneginf(logits).all(-1, keepdim=True)
    if params.bias is not None and dead.any():
        # A bias that leaves nothing (it banned every character the constraint allows)
        # gives way: such a row samples from the model under its constraint alone.
        fallback = model if allowed is None else model.masked_fill(~allowed, -math.inf)
        logits = torch.where(dead, fallback, logits)
    greedy_ids = logits.argmax(-1) if params.any_greedy else None
    if params.all_greedy:
        return greedy_ids
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.any_filter:
        probs = probs * keep_mask(probs, params)
    sampled = draw(probs, torch.from_numpy(u))
    return torch.where(params.greedy, greedy_ids, sampled) if params.any_greedy else sampled
