"""The recurrence one character at a time, for generation: pre-packed weights, in-place
buffers, one matrix product per layer and step.

`StepKernel` runs a trained `CharRNN` forward for a batch of sequences, each at its own
position: ``logits = kernel.step(tokens, state)`` advances every row by one token and
updates `state` in place. The first layer's input projection is a table lookup (the
embedding times W_ih plus biases, precomputed for every token), so a step costs one
(B, H) x (H, G) product per layer for the recurrence, one per deeper layer for its
input, the output layer, and a handful of in-place elementwise ops. The state and all
elementwise arithmetic stay float32.

Precision of the matrix products. On a CPU with native bfloat16 (AVX512-BF16, AMX) the
weights are stored in bfloat16 and the products run in oneDNN's bf16 kernels: half the
bytes to read per step (a single stream is bound by reading the weights), two to three
times the throughput for batches, and a validation loss within 1e-4 nats/char of
float32 (measured on the bundled model). Elsewhere they run in float32.

Batch invariance. A row's result must not depend on which other rows share its batch:
a request served alongside 63 others must produce what it produces alone, and priming a
prompt in pieces must equal priming it whole. oneDNN's bf16 products give a row the same
bits for any row count. float32 BLAS does so once a product has at least 8 rows (below
that it switches to matrix-vector kernels), so in float32 batches are padded to a
multiple of 8 rows (`rows`). The sigmoid is computed as 0.5 * tanh(x / 2) + 0.5, because
PyTorch's vectorised and scalar sigmoid differ in the last bit (and which one an element
gets depends on how a tensor is split) while its tanh does not. Priming uses the same
arithmetic as generation, so every path through the engine yields identical states.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from charnet.cells import State
from charnet.config import PRECISIONS
from charnet.device import native_bf16
from charnet.flops import GATES
from charnet.model import CharRNN


def _half_sigmoid_(x: Tensor) -> Tensor:
    """sigmoid(2x) in place, as 0.5 * tanh(x) + 0.5 (x is the halved pre-activation)."""
    return x.tanh_().mul_(0.5).add_(0.5)


class StepKernel:
    """Single-step forward of a `CharRNN` (eval mode) for batched generation.

    `precision`: ``auto`` (bfloat16 products on CPUs with native bf16, else float32),
    ``float32`` or ``bfloat16``; the environment variable CHARNET_KERNEL_PRECISION
    overrides ``auto``.
    """

    def __init__(self, model: CharRNN, precision: str = "auto") -> None:
        cfg = model.config
        self.cell, self.layers, self.hidden, self.vocab_size = cfg.cell, cfg.layers, cfg.hidden, cfg.vocab_size
        self.state_tensors = cfg.state_tensors
        self.device = model.head.weight.device
        if precision == "auto":
            precision = os.environ.get("CHARNET_KERNEL_PRECISION") or (
                "bfloat16" if native_bf16(self.device) else "float32")
        if precision not in PRECISIONS[1:]:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.mm_dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.row_multiple = 1 if precision == "bfloat16" else 8
        rnn = model.rnn
        h = cfg.hidden
        self.gates = GATES[self.cell]
        # LSTM rows are reordered (i, f, g, o) -> (i, f, o, g) so one sigmoid covers a
        # contiguous 3H block and one tanh the last H.
        order = (torch.cat([torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)])
                 if self.gates == 4 else None)

        # Sigmoid gates are computed as 0.5 * tanh(x / 2) + 0.5 (see batch invariance);
        # their rows are stored halved, which is exact in floating point, so x / 2 comes
        # out of the products and one tanh covers every gate of a layer.
        halved = {"rnn": 0, "lstm": 3, "peephole": 3, "gru": 2}[self.cell] * h

        def rows(t: Tensor) -> Tensor:  # gate rows in the kernel's order, sigmoid ones halved
            t = t.detach().float()
            t = (t[order] if order is not None else t).clone()
            t[:halved] *= 0.5
            return t.contiguous()

        def matrix(t: Tensor) -> Tensor:  # a gate matrix, (out, in)
            return self._pack(rows(t))

        self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.peep = [], [], [], [], []
        for k in range(cfg.layers):
            if self.cell == "peephole":
                w_ih, w_hh, bias, peep = rnn.layer(k)
                b_ih, b_hh = bias, None
                self.peep.append(peep.detach().float().mul(0.5).contiguous())  # rows p_i, p_f, p_o, halved
            else:
                w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
                b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
                if self.cell != "gru":  # the GRU keeps b_hn inside the reset product
                    b_ih, b_hh = b_ih + b_hh, None
            if k == 0:
                w_ih0 = rows(w_ih)
            self.w_ih.append(matrix(w_ih) if k else None)
            self.w_hh.append(matrix(w_hh))
            self.b_ih.append(rows(b_ih))
            self.b_hh.append(rows(b_hh) if b_hh is not None else None)  # GRU: r, z halved, n not
        with torch.no_grad():
            # Layer 0 sees only token ids: its input projection is one row per token,
            # computed once in float32.
            embed = model.embed.weight.detach().float()
            self.table = torch.addmm(self.b_ih[0], embed, w_ih0.t()).contiguous()  # (V, G*H)
            self.w_out = self._pack(model.head.weight.detach().float())
            self.b_out = model.head.bias.detach().float().contiguous()
        self._buffers: dict[int, tuple[Tensor, ...]] = {}

    # -- state ----------------------------------------------------------------------------

    def rows(self, n: int) -> int:
        """Rows a batch of `n` sequences occupies (at least `n`; see batch invariance)."""
        m = self.row_multiple
        return max(m, -(-n // m) * m)

    def zero_state(self, rows: int) -> State:
        """The initial state of `rows` sequences: tuple of (L, rows, H) zeros."""
        return tuple(torch.zeros(self.layers, rows, self.hidden, device=self.device)
                     for _ in range(self.state_tensors))

    def state_bytes(self) -> int:
        """Bytes one sequence's state takes (what a cached prompt costs)."""
        return self.state_tensors * self.layers * self.hidden * 4

    def weight_bytes(self) -> int:
        """Bytes of weights one step reads (the bound on single-stream speed)."""
        mats = [*self.w_hh, *self.w_ih[1:], self.w_out]
        return sum(m.numel() * m.dtype.itemsize for m in mats) + self.table.shape[1] * 4

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

    # -- products -------------------------------------------------------------------------

    def _pack(self, w: Tensor) -> Tensor:
        """A float32 (out, in) weight matrix in the form `_product` reads. In bf16,
        oneDNN's pre-packed layout where available: a product then skips the per-call
        reorder of the weights, nearly halving a single stream's step."""
        if self.mm_dtype is torch.float32:
            return w.contiguous()
        w = w.to(torch.bfloat16).contiguous()
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
            self._linear = lambda x, p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
            return packed
        except (AttributeError, RuntimeError):  # a build without oneDNN's packed linear
            self._linear = torch.nn.functional.linear
            return w

    def _product(self, x: Tensor, w: Tensor) -> Tensor:
        """x @ w.T in the products' precision (bfloat16 only: float32 uses addmm)."""
        return self._linear(x.to(torch.bfloat16), w)

    def _affine(self, out: Tensor, bias: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """out = bias + x @ w.T."""
        if self.mm_dtype is torch.float32:
            return torch.addmm(bias, x, w.t(), out=out)
        return torch.add(bias, self._product(x, w), out=out)

    def _accumulate(self, out: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """out += x @ w.T."""
        if self.mm_dtype is torch.float32:
            return out.addmm_(x, w.t())
        return out.add_(self._product(x, w))

    # -- one step -------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, tokens: Tensor, state: State) -> Tensor:
        """Feed `tokens` (R,) to R sequences whose state (tuple of (L, R, H)) is updated
        in place; return the next-token logits (R, V), a buffer the next call reuses.
        R must be a value of `rows`."""
        rows = tokens.shape[0]
        assert rows == self.rows(rows), "pad the batch to kernel.rows(n)"
        gates, tmp, gates_h, logits = self._scratch(rows)
        x = None
        for k in range(self.layers):
            if k == 0:
                torch.index_select(self.table, 0, tokens, out=gates)
            else:
                self._affine(gates, self.b_ih[k], x, self.w_ih[k])
            x = self._cell(k, gates, gates_h, tmp, state)
        return self._affine(logits, self.b_out, x, self.w_out)

    def _cell(self, k: int, gates: Tensor, gates_h: Tensor, tmp: Tensor, state: State) -> Tensor:
        """Finish layer k from its input projection `gates`; return the new h (a view
        into `state`)."""
        h_dim = self.hidden
        h = state[0][k]
        if self.cell == "gru":
            self._affine(gates_h, self.b_hh[k], h, self.w_hh[k])
            rz = _half_sigmoid_(gates[:, : 2 * h_dim].add_(gates_h[:, : 2 * h_dim]))
            r, z = rz[:, :h_dim], rz[:, h_dim:]
            n = gates[:, 2 * h_dim:].addcmul_(r, gates_h[:, 2 * h_dim:]).tanh_()
            return h.sub_(n).mul_(z).add_(n)  # (1 - z) * n + z * h
        self._accumulate(gates, h, self.w_hh[k])
        if self.cell == "rnn":
            return h.copy_(gates.tanh_())
        c = state[1][k]
        i, f, o, g = (gates[:, j * h_dim:(j + 1) * h_dim] for j in range(4))
        if self.cell == "peephole":
            p_i, p_f, p_o = self.peep[k]
            i.addcmul_(c, p_i)
            f.addcmul_(c, p_f)
            _half_sigmoid_(gates[:, : 2 * h_dim])
            g.tanh_()
            c.mul_(f).addcmul_(i, g)
            _half_sigmoid_(o.addcmul_(c, p_o))
        else:
            gates.tanh_()  # i, f, o (halved) and g at once
            gates[:, : 3 * h_dim].mul_(0.5).add_(0.5)
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
        rows = self.rows(1)
        work = tuple(torch.zeros(self.layers, rows, self.hidden, device=self.device) for _ in range(self.state_tensors))
        for w, s in zip(work, state):
            w[:, 0] = s[:, 0]
        gates, tmp, gates_h, _ = self._scratch(rows)
        # As many rows as a batch of T sequences would have, so each product gives
        # every position the bits it gets in `step`.
        outputs = torch.zeros(self.rows(steps), self.hidden, device=self.device)
        proj = None
        for k in range(self.layers):
            if k == 0:
                proj = self.table.index_select(0, ids)
            else:
                proj = self._affine(torch.empty(len(outputs), self.gates * self.hidden, device=self.device),
                                    self.b_ih[k], outputs, self.w_ih[k])
            for t in range(steps):
                gates[0].copy_(proj[t])
                outputs[t].copy_(self._cell(k, gates, gates_h, tmp, work)[0])
        for w, s in zip(work, state):
            s[:, 0] = w[:, 0]
        last = torch.zeros(rows, self.hidden, device=self.device)
        last[0] = outputs[steps - 1]
        return self._affine(torch.empty(rows, self.vocab_size, device=self.device), self.b_out, last, self.w_out)[0]
