"""Scoring a text under a model: every character's log-probability, as `charnet eval` reports.

A `Scorer` runs the model over the text a window at a time, carrying the recurrent state,
so a server can score a long text in bounded pieces between the steps of its batch; the
result does not depend on the window size. `score_ids` scores a whole text at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from charnet.model import CharRNN

from charnet.units import LN2


@dataclass(kw_only=True)
class Score:
    """How well a model predicts a text, character by character."""

    logprobs: np.ndarray
    """Natural-log probability the model gave each token after the first (float32)."""

    tokens: int
    """Tokens scored: the text's length minus the first one, which has no prediction."""

    unknown: int
    """Tokens of the text outside the vocabulary (scored as the unknown id)."""

    top_ids: np.ndarray | None = None
    """With ``top=k``: the k most likely token ids at each scored position, most likely
    first, shape (tokens, k); None otherwise."""

    top_logprobs: np.ndarray | None = None
    """Their natural-log probabilities, aligned with `top_ids` (float32)."""

    @property
    def nats(self) -> float:
        """Mean cross-entropy in nats per character."""
        return float(-self.logprobs.astype(np.float64).mean()) if self.tokens else float("nan")

    @property
    def bits_per_char(self) -> float:
        return self.nats / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats) if self.tokens else float("nan")


class Scorer:
    """Scores `ids` as one stream from the zero state, `advance` by `advance`: each token
    after the first is predicted from everything before it."""

    def __init__(self, model: CharRNN, ids: np.ndarray, device: torch.device | str = "cpu", *, unknown: int = 0,
                 top: int = 0) -> None:
        self.model, self.device, self.unknown = model, torch.device(device), unknown
        self.ids = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
        self.n = max(len(self.ids) - 1, 0)
        self.k = min(top, model.config.vocab_size)
        self.out = torch.empty(self.n, dtype=torch.float32, device=self.device)
        self.top_v = torch.empty(self.n, self.k, dtype=torch.float32, device=self.device) if self.k else None
        self.top_i = torch.empty(self.n, self.k, dtype=torch.int64, device=self.device) if self.k else None
        self.position = 0
        self._state = None

    @property
    def done(self) -> bool:
        return self.position >= self.n

    @torch.no_grad()
    def advance(self, window: int) -> None:
        """Score the next `window` positions (fewer at the end)."""
        start = self.position
        stop = min(start + window, self.n)
        if stop <= start:
            return
        self.model.eval()
        logits, self._state = self.model(self.ids[start:stop].unsqueeze(0), self._state)
        logp = torch.log_softmax(logits[0].float(), dim=-1)
        self.out[start:stop] = logp.gather(1, self.ids[start + 1:stop + 1].unsqueeze(1)).squeeze(1)
        if self.k:
            self.top_v[start:stop], self.top_i[start:stop] = logp.topk(self.k, dim=-1)
        self.position = stop

    def result(self) -> Score:
        if not self.k:
            return Score(logprobs=self.out.cpu().numpy(), tokens=self.n, unknown=self.unknown)
        return Score(logprobs=self.out.cpu().numpy(), tokens=self.n, unknown=self.unknown,
                     top_ids=self.top_i.cpu().numpy(), top_logprobs=self.top_v.cpu().numpy())


def score_ids(model: CharRNN, ids: np.ndarray, device: torch.device | str = "cpu", *, unknown: int = 0,
              window: int = 1024, top: int = 0) -> Score:
    """Score `ids` whole (see `Scorer`), `window` tokens per forward pass; with `top` > 0,
    keep the `top` most likely tokens at each position too (what the model expected)."""
    scorer = Scorer(model, ids, device, unknown=unknown, top=top)
    while not scorer.done:
        scorer.advance(window)
    return scorer.result()
