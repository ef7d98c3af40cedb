"""The optimizer and the learning-rate schedule: AdamW with decoupled weight decay on
matrices, linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math

import torch

from charnet.config import TrainConfig
from charnet.model import CharRNN


def make_optimizer(model: CharRNN, cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices only: biases, peephole vectors and the embedding table are not
    # redundant parameterisations that decay would usefully shrink.
    decay, no_decay = [], []
    embed = model.embed.weight
    for p in model.parameters():
        (decay if p.dim() >= 2 and p is not embed else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from `lr` to `lr * min_lr_ratio`
    as `progress` (the fraction of the budget spent) goes from 0 to 1."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)
