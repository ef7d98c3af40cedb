"""Validation loss during training (per-text scores for `charnet eval` live in `charnet.inference.scoring`)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from charnet.training.data import IGNORE, EvalStreams
from charnet.training.line_batches import LineEval
from charnet.model import CharRNN


def autocast_for(device: torch.device, precision: str = "auto"):
    """bf16 autocast where `precision` asks for it (``auto``: on CUDA only); the
    recurrent state carried between windows and the loss stay float32."""
    if precision == "bfloat16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: CharRNN, streams: EvalStreams | LineEval, device: torch.device,
             precision: str = "auto") -> tuple[float, int]:
    """(summed loss in nats, tokens scored) over every window of `streams`, the state
    carried from one window to the next unless the next starts afresh."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    state = None
    try:
        for k in range(len(streams)):
            if streams.fresh(k):
                state = None
            x, y = (t.to(device, non_blocking=True) for t in streams.batch(k))
            with autocast_for(device, precision):
                logits, state = model(x, state)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum",
                                     ignore_index=IGNORE)
    finally:
        model.train(was_training)
    return float(total), streams.targets
