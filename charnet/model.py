"""CharRNN: embedding -> stacked recurrent cells -> dropout -> linear head over the vocabulary."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from charnet.cells import State, make_recurrent
from charnet.config import ModelConfig


class CharRNN(nn.Module):
    """A character-level recurrent language model.

    ``logits, state = model(idx, state)``: idx (B, T) token ids, logits (B, T, V) the
    unnormalised next-token scores at every position, state the recurrent state after
    the last position (see `charnet.cells`), to be fed back in for the next window.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embedding)
        self.rnn = make_recurrent(config.cell, config.embedding, config.hidden, config.layers, config.dropout)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self._init_forget_bias()

    def _init_forget_bias(self) -> None:
        # A forget-gate bias of 1 lets an LSTM carry its cell state from the first step
        # instead of halving it (Jozefowicz et al. 2015); it trains faster on characters.
        if self.config.cell not in ("lstm", "peephole"):
            return
        h = self.config.hidden
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if name.startswith(("bias_ih", "bias_l")):
                    p[h:2 * h].fill_(1.0)
                elif name.startswith("bias_hh"):
                    p[h:2 * h].zero_()

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        x = self.embed(idx)  # (B, T, E)
        y, state = self.rnn(x, state)  # (B, T, H)
        return self.head(self.drop(y)), state  # (B, T, V)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())



def detach_state(state: State) -> State:
    """Cut the graph at a window boundary (truncated backpropagation through time)."""
    return tuple(s.detach() for s in state)
