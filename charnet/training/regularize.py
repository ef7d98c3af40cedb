"""AWD-LSTM's regularisers (Merity, Keskar & Socher 2017), for every cell, in training only.

`Regularized` wraps a `CharRNN` and computes its training forward pass with

- weight drop: DropConnect on each layer's hidden-to-hidden matrix, one mask per
  optimizer step. The dropped matrix is passed in place of the parameter
  (`torch.func.functional_call`), so the fused kernels (PyTorch's CPU kernels, cuDNN)
  and the peephole cell's own scan run unchanged, and the gradient reaches the
  parameter through the mask;
- embedding dropout: whole rows of the embedding matrix (characters) zeroed for the
  step, the others scaled by 1 / (1 - p);
- input dropout on the embedded characters, and the model's `dropout` between layers
  and before the output layer, each with one mask per stream for the whole window
  (locked, variational dropout) or a fresh mask per position;
- activation (AR) and temporal activation (TAR) regularisation of the top layer's
  output, returned as a penalty for the trainer to add to the loss.

To put dropout between layers the stack runs one layer at a time, each through a
one-layer module of its cell that holds no weights of its own (built on the meta
device); with every rate at zero it computes exactly what the model does. Nothing is
written into the model's parameters, so a checkpoint holds ordinary weights and
inference never sees any of this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from charnet.cells import State, make_recurrent
from charnet.config import TrainConfig
from charnet.model import CharRNN


def _drop(x: Tensor, p: float, locked: bool) -> Tensor:
    """Dropout of (B, T, D) activations: one mask per stream shared by its T steps
    when `locked`, else a fresh one per element."""
    if not p:
        return x
    if not locked:
        return F.dropout(x, p, training=True)
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p).div_(1 - p)
    return x * mask


def _mean(x: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of x (B, T, D) over the positions `valid` (B, T) marks (all when None)."""
    if valid is None:
        return x.mean()
    weights = valid.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum() / (weights.sum() * x.shape[-1]).clamp_min(1)


class Regularized(nn.Module):
    """``logits, state, penalty = Regularized(model, cfg)(idx, state, valid)``.

    `valid` (B, T) marks the positions with a target (line batches pad); AR and TAR
    average over those. `penalty` is zero when both are off.
    """

    def __init__(self, model: CharRNN, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        mc = model.config
        with torch.device("meta"):
            # A plain tuple, not submodules: they hold no parameters of their own.
            self.layers = tuple(make_recurrent(mc.cell, mc.embedding if k == 0 else mc.hidden, mc.hidden, 1, 0.0)
                                for k in range(mc.layers))

    def _weights(self, k: int) -> dict[str, Tensor]:
        """Layer k's parameters under the one-layer module's names, the hidden-to-hidden
        matrix DropConnect-ed."""
        suffix = f"_l{k}"
        weights = {name[: -len(suffix)] + "_l0": p for name, p in self.model.rnn.named_parameters()
                   if name.endswith(suffix)}
        if self.cfg.weight_drop:
            weights["weight_hh_l0"] = F.dropout(weights["weight_hh_l0"], self.cfg.weight_drop, training=True)
        return weights

    def forward(self, idx: Tensor, state: State | None = None,
                valid: Tensor | None = None) -> tuple[Tensor, State, Tensor]:
        cfg, model = self.cfg, self.model
        p, locked = model.config.dropout, cfg.locked_dropout
        table = model.embed.weight
        if cfg.embed_dropout:
            keep = table.new_empty(table.shape[0], 1).bernoulli_(1 - cfg.embed_dropout).div_(1 - cfg.embed_dropout)
            table = table * keep
        x = _drop(F.embedding(idx, table), cfg.input_dropout, locked)
        layer_states = []
        for k, layer in enumerate(self.layers):
            if k:
                x = _drop(x, p, locked)
            x, s = functional_call(layer, self._weights(k), (x, None if state is None else tuple(t[k:k + 1] for t in state)))
            layer_states.append(s)
        out = _drop(x, p, locked)
        penalty = x.new_zeros((), dtype=torch.float32)
        if cfg.ar:
            penalty = penalty + cfg.ar * _mean(out.float().pow(2), valid)
        if cfg.tar:
            steps = valid[:, 1:] & valid[:, :-1] if valid is not None else None
            penalty = penalty + cfg.tar * _mean((x[:, 1:] - x[:, :-1]).float().pow(2), steps)
        new_state = tuple(torch.cat(parts) for parts in zip(*layer_states))
        return model.head(out), new_state, penalty
