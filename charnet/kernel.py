"""The recurrence one character at a time, for generation: pre-packed weights, in-place
buffers, one matrix product per layer and step.

`StepKernel` runs a trained `CharRNN` forward for a batch of sequences, each at its own
position: ``logits = kernel.step(tokens, state)`` advances every row by one token and
updates `state` in place. The first layer's input projection is a table lookup (the
embedding times W_ih plus biases, precomputed for every token), so a step costs one
(B, H) x (H, G) product per layer for the recurrence, one per deeper layer for its
input, and a handful of in-place elementwise ops.

Batch invariance. A row's result must not depend on which other rows share its batch:
a request served alongside 63 others must produce what it produces alone, and priming a
prompt in pieces must equal priming it whole. On CPU, matrix products give every row the
same bits once the batch has at least 8 rows (below that BLAS switches to other
kernels), so batches are padded to a multiple of 8 rows; and the sigmoid is computed as
0.5 * tanh(x / 2) + 0.5, because PyTorch's vectorised and scalar sigmoid differ in the
last bit while its tanh does not. Priming uses the same arithmetic as generation, one
step at a time, so every path through the engine yields identical states.
"""

from __future__ import annotations

import torch
from torch import Tensor

from charnet.cells import State
from charnet.model import CharRNN

ROW_MULTIPLE = 8


def padded_rows(rows: int) -> int:
    """Rows a batch of `rows` sequences occupies: a multiple of 8, at least 8."""
    return max(ROW_MULTIPLE, -(-rows // ROW_MULTIPLE) * ROW_MULTIPLE)


def _sigmoid_(x: Tensor) -> Tensor:
    return x.mul_(0.5).tanh_().mul_(0.5).add_(0.5)


class StepKernel:
    """Single-step forward of a `CharRNN` (eval mode) for batched generation."""

    def __init__(self, model: CharRNN) -> None:
        cfg = model.config
        self.cell, self.layers, self.hidden, self.vocab_size = cfg.cell, cfg.layers, cfg.hidden, cfg.vocab_size
        self.state_tensors = cfg.state_tensors
        self.device = model.head.weight.device
        rnn = model.rnn
        h = cfg.hidden
        self.gates = {"rnn": 1, "lstm": 4, "peephole": 4, "gru": 3}[self.cell]
        # LSTM rows are reordered (i, f, g, o) -> (i, f, o, g) so one sigmoid covers a
        # contiguous 3H block and one tanh the last H.
        order = (torch.cat([torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)])
                 if self.gates == 4 else None)

        def rows(t: Tensor) -> Tensor:
            t = t.detach().float()
            return (t[order] if order is not None else t).contiguous()

        self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.peep = [], [], [], [], []
        for k in range(cfg.layers):
            if self.cell == "peephole":
                w_ih, w_hh, bias, peep = rnn.layer(k)
                b_ih, b_hh = bias, None
                self.peep.append(peep.detach().float().contiguous())  # rows p_i, p_f, p_o
            else:
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
                if self.cell != "gru":  # the GRU keeps b_hn inside the reset product
                    b_ih, b_hh = b_ih + b_hh, None
            self.w_ih.append(rows(w_ih))
            self.w_hh.append(rows(w_hh))
            self.b_ih.append(rows(b_ih))
            self.b_hh.append(rows(b_hh) if b_hh is not None else None)
        with torch.no_grad():
            # Layer 0 sees only token ids: its input projection is one row per token.
            embed = model.embed.weight.detach().float()
            self.table = torch.addmm(self.b_ih[0], embed, self.w_ih[0].t()).contiguous()  # (V, G*H)
            self.w_out = model.head.weight.detach().float().contiguous()
            self.b_out = model.head.bias.detach().float().contiguous()
        self._buffers: dict[int, tuple[Tensor, ...]] = {}

    # -- state ----------------------------------------------------------------------------

    def zero_state(self, rows: int) -> State:
        """The initial state of `rows` sequences: tuple of (L, rows, H) zeros."""
        return tuple(torch.zeros(self.layers, rows, self.hidden, device=self.device)
                     for _ in range(self.state_tensors))

    def state_bytes(self) -> int:
        """Bytes one sequence's state takes (what a cached prompt costs)."""
        return self.state_tensors * self.layers * self.hidden * 4

    def _scratch(self, rows: int) -> tuple[Tensor, ...]:
        buf = self._buffers.get(rows)
        if buf is None:
            g, h = self.gates * self.hidden, self.hidden
            buf = (torch.empty(rows, g, device=self.device), torch.empty(rows, h, device=self.device),
                   torch.empty(rows, g, device=self.device), torch.empty(rows, self.vocab_size, device=self.device))
            if len(self._buffers) >= 4:  # a few sizes: the batch's, priming's, a resize
                self._buffers.pop(next(iter(self._buffers)))
            self._buffers[rows] = buf
        return buf

    # -- one step -------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, tokens: Tensor, state: State) -> Tensor:
        """Feed `tokens` (R,) to R sequences whose state (tuple of (L, R, H)) is updated
        in place; return the next-token logits (R, V). R must be a multiple of 8."""
        rows = tokens.shape[0]
        assert rows % ROW_MULTIPLE == 0, "pad the batch with padded_rows()"
        gates, tmp, gates_h, logits = self._scratch(rows)
        x = None
        for k in range(self.layers):
            if k == 0:
                torch.index_select(self.table, 0, tokens, out=gates)
            else:
                torch.addmm(self.b_ih[k], x, self.w_ih[k].t(), out=gates)
            x = self._cell(k, gates, gates_h, tmp, state)
        return torch.addmm(self.b_out, x, self.w_out.t(), out=logits)

    def _cell(self, k: int, gates: Tensor, gates_h: Tensor, tmp: Tensor, state: State) -> Tensor:
        """Finish layer k from its input projection `gates`; return the new h (a view
        into `state`)."""
        h_dim = self.hidden
        h = state[0][k]
        if self.cell == "gru":
            torch.addmm(self.b_hh[k], h, self.w_hh[k].t(), out=gates_h)
            rz = _sigmoid_(gates[:, : 2 * h_dim].add_(gates_h[:, : 2 * h_dim]))
            r, z = rz[:, :h_dim], rz[:, h_dim:]
            n = gates[:, 2 * h_dim:].addcmul_(r, gates_h[:, 2 * h_dim:]).tanh_()
            return h.sub_(n).mul_(z).add_(n)  # (1 - z) * n + z * h
        gates.addmm_(h, self.w_hh[k].t())
        if self.cell == "rnn":
            return h.copy_(gates.tanh_())
        c = state[1][k]
        i, f, o, g = (gates[:, j * h_dim:(j + 1) * h_dim] for j in range(4))
        if self.cell == "peephole":
            p_i, p_f, p_o = self.peep[k]
            i.addcmul_(c, p_i)
            f.addcmul_(c, p_f)
            _sigmoid_(gates[:, : 2 * h_dim])
            g.tanh_()
            c.mul_(f).addcmul_(i, g)
            _sigmoid_(o.addcmul_(c, p_o))
        else:
            _sigmoid_(gates[:, : 3 * h_dim])
            g.tanh_()
            c.mul_(f).addcmul_(i, g)
        return torch.mul(o, torch.tanh(c, out=tmp), out=h)

    # -- priming --------------------------------------------------------------------------

    @torch.no_grad()
    def prime(self, ids: Tensor, state: State) -> Tensor:
        """Run one sequence (its state: tuple of (L, 1, H), updated in place) over `ids`
        (T,), T >= 1; return the logits after the last id (V,).

        Layer by layer over the whole prompt: each layer's input projection for all T
        positions is one matrix product, then its recurrence steps through them, with
        exactly the arithmetic of `step`, so priming in pieces equals priming whole and
        equals generating the same characters."""
        steps = ids.shape[0]
        rows = ROW_MULTIPLE
        work = tuple(torch.zeros(self.layers, rows, self.hidden, device=self.device) for _ in range(self.state_tensors))
        for w, s in zip(work, state):
            w[:, 0] = s[:, 0]
        gates, tmp, gates_h, _ = self._scratch(rows)
        # Rows padded to a multiple of 8 like every batch: GEMM gives a row the same bits
        # for any such row count, so a prompt primed in pieces matches one primed whole.
        outputs = torch.zeros(padded_rows(steps), self.hidden, device=self.device)
        proj = None
        for k in range(self.layers):
            if k == 0:
                proj = self.table.index_select(0, ids)
            else:
                proj = torch.addmm(self.b_ih[k], outputs, self.w_ih[k].t())
            for t in range(steps):
                gates[0].copy_(proj[t])
                outputs[t].copy_(self._cell(k, gates, gates_h, tmp, work)[0])
        for w, s in zip(work, state):
            s[:, 0] = w[:, 0]
        last = outputs[steps - 1: steps]
        pad = torch.zeros(rows, self.hidden, device=self.device)
        pad[0] = last[0]
        return torch.addmm(self.b_out, pad, self.w_out.t())[0]
