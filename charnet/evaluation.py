"""Scoring text under a model: validation loss, `charnet eval`, and per-character scores."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charnet.data import Streams
from charnet.model import CharRNN

LN2 = math.log(2)


def autocast_for(device: torch.device, precision: str = "auto"):
    """bf16 autocast where `precision` asks for it (``auto``: on CUDA only); the
    recurrent state carried between windows and the loss stay float32."""
    if precision == "bfloat16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: CharRNN, streams: Streams, device: torch.device, precision: str = "auto") -> tuple[float, int]:
    """(summed loss in nats, characters scored) over every window of `streams`, the
    state carried across windows as in training."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    state = None
    try:
        for k in range(len(streams)):
            x, y = (t.to(device, non_blocking=True) for t in streams.batch(k))
            with autocast_for(device, precision):
                logits, state = model(x, state)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum")
    finally:
        model.train(was_training)
    return float(total), len(streams) * streams.batch_size * streams.seq_len


@dataclass
class Score:
    """How well a model predicts a text, character by character."""

    logprobs: np.ndarray
    """Natural-log probability the model gave each token after the first (float32)."""

    tokens: int
    """Tokens scored: the text's length minus the first one, which has no prediction."""

    unknown: int
    """Tokens of the text outside the vocabulary (scored as the unknown id)."""

    top_ids: np.ndarray | None = None
    """With ``score_ids(..., top=k)``: the k most likely token ids at each scored
    position, most likely first, shape (tokens, k); None otherwise."""

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


@torch.no_grad()
def score_ids(model: CharRNN, ids: np.ndarray, device: torch.device | str = "cpu", *, unknown: int = 0,
              window: int = 1024, top: int = 0) -> Score:
    """Score `ids` as one stream from the zero state: each token after the first is
    predicted from everything before it. Windows of `window` tokens carry the state,
    so the result does not depend on the window size. With `top` > 0, also keep the
    `top` most likely tokens at each position (what the model expected instead)."""
    device = torch.device(device)
    model.eval()
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)
    n = max(len(ids_t) - 1, 0)
    out = torch.empty(n, dtype=torch.float32, device=device)
    k = min(top, model.config.vocab_size)
    top_v = torch.empty(n, k, dtype=torch.float32, device=device) if k else None
    top_i = torch.empty(n, k, dtype=torch.int64, device=device) if k else None
    state = None
    for start in range(0, n, window):
        stop = min(start + window, n)
        x = ids_t[start:stop].unsqueeze(0)
        logits, state = model(x, state)
        logp = torch.log_softmax(logits[0].float(), dim=-1)
        out[start:stop] = logp.gather(1, ids_t[start + 1:stop + 1].unsqueeze(1)).squeeze(1)
        if k:
            top_v[start:stop], top_i[start:stop] = logp.topk(k, dim=-1)
    if not k:
        return Score(out.cpu().numpy(), n, unknown)
    return Score(out.cpu().numpy(), n, unknown, top_i.cpu().numpy(), top_v.cpu().numpy())
