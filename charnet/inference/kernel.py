"""The recurrence one character at a time, for generation: pre-packed weights, in-place
buffers, one matrix product per layer and step.

`StepKernel` runs a trained `CharRNN` forward for a batch of sequences, each at its own
position: ``logits = kernel.step(tokens, state)`` advances every row by one token and
updates `state` in place. The first layer's input projection is a table lookup (the
embedding times W_ih plus biases, precomputed for every token); the state and all
elementwise arithmetic stay float32. On the fused path (below) a step is one product per
layer: layer k's new h is multiplied at once by the next layer's W_ih (or the output
layer) and by its own W_hh, stacked, and the second half is carried in the state to the
next step. On the aten path it is one (B, H) x (H, G) product per layer for the
recurrence, one per deeper layer for its input, and the output layer.

The element-wise part of each layer (biases, gates, cell update, the conversion of h for
the next product) runs one of two ways, chosen when the kernel is built (`fused`):

- **fused** (CPU, where numba is installed; the default there): one compiled call per
  layer (`charnet.inference.fused_cells`), with the products taken without their biases;
- **aten** (the fallback: GPUs, no numba, or ``CHARNET_FUSED_STEP=0``): a dozen in-place
  PyTorch ops per layer, the biases added by the products.

The two agree to float32 rounding, not bit for bit (the fused tanh is a polynomial of
its own); every property below holds within each.

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
gets depends on how a tensor is split) while its tanh does not; the fused loop runs the
same instructions at every element, so any formula would do, and it keeps this one to
share the packed weights. Priming uses the same arithmetic as generation, so every path
through the engine yields identical states. The products themselves: `products`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from charnet.cells import State
from charnet.config import PRECISIONS
from charnet.device import native_bf16
from charnet.flops import GATES
from charnet.inference.products import Products
from charnet.model import CharRNN


def _half_sigmoid_(x: Tensor) -> Tensor:
    """sigmoid(2x) in place, as 0.5 * tanh(x) + 0.5 (x is the halved pre-activation)."""
    return x.tanh_().mul_(0.5).add_(0.5)


PRECISION_ENV = "CHARNET_KERNEL_PRECISION"
"""Overrides ``auto`` precision: float32 or bfloat16."""

FUSED_ENV = "CHARNET_FUSED_STEP"
"""0 turns the fused step off: the ATen kernel everywhere (the fallback), e.g. to compare."""


def environment() -> tuple[str | None, ...]:
    """The environment variables that change what a new kernel computes."""
    return os.environ.get(PRECISION_ENV), os.environ.get(FUSED_ENV)


def _fused_cells():
    """The compiled cells' module, or None where the fused step cannot run (numba
    missing or broken, or turned off by the environment)."""
    if os.environ.get(FUSED_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from charnet.inference import fused_cells
    except Exception:  # numba absent, or failing to import on this platform
        return None
    return fused_cells


def _bits(t: Tensor) -> np.ndarray:
    """A CPU tensor as the numpy array the fused cells read (bfloat16 as int16 bits)."""
    return (t.view(torch.int16) if t.dtype is torch.bfloat16 else t).numpy()


class StepKernel:
    """Single-step forward of a `CharRNN` (eval mode) for batched generation.

    `precision`: ``auto`` (bfloat16 products on CPUs with native bf16, else float32),
    ``float32`` or ``bfloat16``; the environment variable CHARNET_KERNEL_PRECISION
    overrides ``auto``. `fused`: the element-wise part compiled (True), in PyTorch ops
    (False), or compiled wherever it can be (None).
    """

    def __init__(self, model: CharRNN, precision: str = "auto", fused: bool | None = None) -> None:
        cfg = model.config
        self.cell, self.layers, self.hidden, self.vocab_size = cfg.cell, cfg.layers, cfg.hidden, cfg.vocab_size
        self.state_tensors = cfg.state_tensors
        self.device = model.head.weight.device
        if precision == "auto":
            precision = os.environ.get(PRECISION_ENV) or (
                "bfloat16" if native_bf16(self.device) else "float32")
        if precision not in PRECISIONS[1:]:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.mm_dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.products = Products(self.mm_dtype)
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

        cells = _fused_cells() if self.device.type == "cpu" and fused is not False else None
        if fused and cells is None:
            raise ValueError("the fused step needs the CPU, numba, and CHARNET_FUSED_STEP not set to 0")
        self.fused = cells is not None
        """Whether the element-wise part runs compiled (`charnet.inference.fused_cells`)."""
        w_ih, w_hh = [], []  # float32 gate rows, layer by layer (w_ih[0] feeds the table)
        self.b_ih, self.b_hh, self.peep = [], [], []
        for k in range(cfg.layers):
            if self.cell == "peephole":
                w_i, w_h, bias, peep = rnn.layer(k)
                b_i, b_h = bias, None
                self.peep.append(peep.detach().float().mul(0.5).contiguous())  # rows p_i, p_f, p_o, halved
            else:
                w_i, w_h = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
                b_i, b_h = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
                if self.cell != "gru":  # the GRU keeps b_hn inside the reset product
                    b_i, b_h = b_i + b_h, None
            w_ih.append(rows(w_i))
            w_hh.append(rows(w_h))
            self.b_ih.append(rows(b_i))
            self.b_hh.append(rows(b_h) if b_h is not None else None)  # GRU: r, z halved, n not
        head = model.head.weight.detach().float()
        with torch.no_grad():
            # Layer 0 sees only token ids: its input projection is one row per token,
            # computed once in float32.
            embed = model.embed.weight.detach().float()
            self.table = torch.addmm(self.b_ih[0], embed, w_ih[0].t()).contiguous()  # (V, G*H)
            self.b_out = model.head.bias.detach().float().contiguous()
        self._buffers: dict[int, tuple] = {}
        if self.fused:
            # One product per layer and step: layer k's new h feeds the layer above (or
            # the output layer) now and its own recurrence at the next step, so both
            # matrices are stacked, [above; w_hh], and the step carries the second half of
            # the result in its state. A single stream pays a product's fixed cost (about
            # 16 us in oneDNN here) half as often.
            self.above = [h * self.gates] * (cfg.layers - 1) + [self.vocab_size]
            """Rows of each layer's stacked product that feed the layer above (the last:
            the logits); the rest are the recurrence's, carried to the next step."""
            pack = self.products.pack
            self.stacked = [pack(torch.cat([w_ih[k + 1] if k + 1 < cfg.layers else head, w_hh[k]]))
                            for k in range(cfg.layers)]
            self._cell_fn, self._logits_fn = cells.CELLS[self.cell], cells.logits
            # Products come without biases: layer 0's are in the table, the rest are added
            # by the compiled cell (bx to the input's projection, bh to h's).
            zeros = np.zeros(self.gates * h, dtype=np.float32)
            self._bx = [zeros] + [self.b_ih[k].numpy() for k in range(1, cfg.layers)]
            self._bh = [b.numpy() if b is not None else zeros for b in self.b_hh]
            self._peep = [p.numpy() for p in self.peep]
            self._table, self._b_out = self.table.numpy(), self.b_out.numpy()
            self._arange = np.arange(256, dtype=np.int64)
            self._viewed: tuple | None = None  # (state, its arrays): see `_arrays`
        else:
            self.w_ih = [None] + [self.products.pack(w) for w in w_ih[1:]]
            self.w_hh = [self.products.pack(w) for w in w_hh]
            self.w_out = self.products.pack(head)

    # -- state ----------------------------------------------------------------------------

    def rows(self, n: int) -> int:
        """Rows a batch of `n` sequences occupies (at least `n`; see batch invariance)."""
        m = self.row_multiple
        return max(m, -(-n // m) * m)

    def zero_state(self, rows: int) -> State:
        """The initial state of `rows` sequences: the model's, a tuple of (L, rows, H)
        zeros, and on the fused path, last, the product of each layer's h its next step
        starts from, (L, rows, G) zeros in the products' dtype (see `stacked`)."""
        state = tuple(torch.zeros(self.layers, rows, self.hidden, device=self.device)
                      for _ in range(self.state_tensors))
        if self.fused:
            state += (torch.zeros(self.layers, rows, self.gates * self.hidden, dtype=self.mm_dtype),)
        return state

    def initial(self) -> tuple[State, Tensor]:
        """One sequence before its first token: its zero state and zero logits (V,)."""
        return self.zero_state(1), torch.zeros(self.vocab_size, device=self.device)

    def weight_bytes(self) -> int:
        """Bytes of weights one step reads (the bound on single-stream speed)."""
        mats = self.stacked if self.fused else [*self.w_hh, *self.w_ih[1:], self.w_out]
        return sum(m.numel() * m.dtype.itemsize for m in mats) + self.table.shape[1] * 4

    def _scratch(self, rows: int) -> tuple:
        """Buffers of a batch of `rows`: (gates, tmp, gates_h, logits) for the aten path;
        for the fused one (the stacked products' outputs, one per layer in float32, None
        in bf16 where oneDNN returns its own; x (L, rows, H) in the products' dtype;
        x's bits (`_bits`); logits)."""
        buf = self._buffers.get(rows)
        if buf is None:
            g, h = self.gates * self.hidden, self.hidden
            if self.fused:
                outs = [None if self.mm_dtype is torch.bfloat16 else torch.empty(rows, n + g)
                        for n in self.above]
                xs = torch.empty(self.layers, rows, h, dtype=self.mm_dtype)
                buf = (outs, xs, _bits(xs), torch.empty(rows, self.vocab_size))
            else:
                buf = (torch.empty(rows, g, device=self.device), torch.empty(rows, h, device=self.device),
                       torch.empty(rows, g, device=self.device), torch.empty(rows, self.vocab_size, device=self.device))
            if len(self._buffers) >= 4:  # a few sizes: the batch's, priming's, a resize
                self._buffers.pop(next(iter(self._buffers)))
            self._buffers[rows] = buf
        return buf

    # -- one step -------------------------------------------------------------------------

    def step(self, tokens: Tensor, state: State, out: Tensor | None = None) -> Tensor:
        """Feed `tokens` (R,) to R sequences whose state (`zero_state`'s tuple) is
        updated in place; return the next-token logits (R, V): `out`, or a buffer the
        next call reuses. R must be a value of `rows`. (No autograd to turn off: every tensor the
        kernel holds is detached, and torch.no_grad would cost a single stream 2% a
        step.)"""
        rows = tokens.shape[0]
        assert rows == self.rows(rows), "pad the batch to kernel.rows(n)"
        if self.fused:
            return self._fused_step(tokens, state, out)
        gates, tmp, gates_h, logits = self._scratch(rows)
        x = None
        for k in range(self.layers):
            if k == 0:
                torch.index_select(self.table, 0, tokens, out=gates)
            else:
                self.products.affine(gates, self.b_ih[k], x, self.w_ih[k])
            x = self._cell(k, gates, gates_h, tmp, state)
        return self.products.affine(logits if out is None else out, self.b_out, x, self.w_out)

    def _cell(self, k: int, gates: Tensor, gates_h: Tensor, tmp: Tensor, state: State) -> Tensor:
        """Finish layer k from its input projection `gates`; return the new h (a view
        into `state`)."""
        h_dim = self.hidden
        h = state[0][k]
        if self.cell == "gru":
            self.products.affine(gates_h, self.b_hh[k], h, self.w_hh[k])
            rz = _half_sigmoid_(gates[:, : 2 * h_dim].add_(gates_h[:, : 2 * h_dim]))
            r, z = rz[:, :h_dim], rz[:, h_dim:]
            n = gates[:, 2 * h_dim:].addcmul_(r, gates_h[:, 2 * h_dim:]).tanh_()
            return h.sub_(n).mul_(z).add_(n)  # (1 - z) * n + z * h
        self.products.accumulate(gates, h, self.w_hh[k])
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

    def _fused_step(self, tokens: Tensor, state: State, out: Tensor | None) -> Tensor:
        # Bits and numpy views are taken once per tensor: each view costs a few us, as
        # much as a layer's element-wise work for one row.
        rows = tokens.shape[0]
        outs, xs, x_bits, logits = self._scratch(rows)
        arrays, carried = self._arrays(state)
        gx, idx = self._table, tokens.numpy()
        for k in range(self.layers):
            self._fused_layer(k, gx, idx, carried[k], arrays, x_bits[k])
            # The layer above reads its gates' columns, the first G, of the whole product.
            gx, idx = _bits(self.products.bare(xs[k], self.stacked[k], outs[k])), self._positions(rows)
            carried[k] = gx[:, self.above[k]:]
        out = logits if out is None else out
        self._logits_fn(gx, self._b_out, out.numpy())
        return out

    def _arrays(self, state: State) -> tuple[list[np.ndarray], np.ndarray]:
        """`state` as the compiled cells read it: the model's tensors, and the carried
        products' bits. A batch steps the same tuple until it resizes, so the last one's
        views are kept (with the tuple: its identity cannot pass to another meanwhile)."""
        if self._viewed is None or self._viewed[0] is not state:
            *model_state, carried = state
            self._viewed = (state, [s.numpy() for s in model_state], _bits(carried))
        return self._viewed[1], self._viewed[2]

    def _fused_layer(self, k: int, gx: np.ndarray, idx: np.ndarray, gh: np.ndarray, state: list[np.ndarray],
                     x: np.ndarray) -> None:
        """Layer k's compiled cell: state[...][k] updated, its new h written to x."""
        extra = (self._peep[k],) if self.cell == "peephole" else ()
        self._cell_fn(gx, idx, self._bx[k], gh, self._bh[k], k, *state, *extra, x)

    def _positions(self, n: int) -> np.ndarray:
        """0..n-1, the rows of a deeper layer's projection each row reads."""
        if len(self._arange) < n:
            self._arange = np.arange(n, dtype=np.int64)
        return self._arange[:n]

    # -- priming --------------------------------------------------------------------------

    def _prime_rows(self, steps: int) -> int:
        """Rows of the products that project a prompt of `steps` positions at once (the
        aten path): the next power of two (and at least `rows(steps)`). oneDNN keeps a
        primitive, about 1 MB here, for each shape it has run, up to 1,024 of them: one
        per prompt length grew a server by 180 MB over prompts of 2 to 201 characters.
        A row's bits do not depend on the rows beside it, so the padding changes nothing
        but the memory."""
        return max(self.rows(steps), 1 << (steps - 1).bit_length())

    @torch.no_grad()
    def prime(self, ids: Tensor, state: State) -> Tensor:
        """Run one sequence (its state: `zero_state(1)`'s tuple, updated in place) over
        `ids` (T,), T >= 1; return the logits after the last id (V,).

        Layer by layer over the whole prompt, with exactly the arithmetic of `step`, so
        priming in pieces equals priming whole and equals generating the same
        characters: on the aten path each layer's input projection for all T positions
        is one matrix product, then its recurrence steps through them; on the fused path
        each position's stacked product also gives the layer above its input."""
        steps = ids.shape[0]
        rows = self.rows(1)
        work = self.zero_state(rows)
        for w, s in zip(work, state):
            w[:, 0] = s[:, 0]
        if self.fused:
            return self._fused_prime(ids, state, work)
        gates, tmp, gates_h, _ = self._scratch(rows)
        # A batch's rows (padded: `_prime_rows`), so each product gives every position
        # the bits it gets in `step`.
        outputs = torch.zeros(self._prime_rows(steps), self.hidden, device=self.device)
        proj = None
        for k in range(self.layers):
            if k == 0:
                proj = self.table.index_select(0, ids)
            else:
                proj = self.products.affine(torch.empty(len(outputs), self.gates * self.hidden, device=self.device),
                                            self.b_ih[k], outputs, self.w_ih[k])
            for t in range(steps):
                gates[0].copy_(proj[t])
                outputs[t].copy_(self._cell(k, gates, gates_h, tmp, work)[0])
        for w, s in zip(work, state):
            s[:, 0] = w[:, 0]
        last = torch.zeros(rows, self.hidden, device=self.device)
        last[0] = outputs[steps - 1]
        logits = torch.empty(rows, self.vocab_size, device=self.device)
        return self.products.affine(logits, self.b_out, last, self.w_out)[0]

    def _fused_prime(self, ids: Tensor, state: State, work: State) -> Tensor:
        """`prime` with the compiled cells: layer by layer, for each position the cell
        and the layer's stacked product on one row, as `_fused_step` computes them for a
        batch of `rows(1)`; the part for the layer above is kept for every position."""
        steps, rows = ids.shape[0], self.rows(1)
        outs, xs, x_bits, logits = self._scratch(rows)
        arrays, carried = self._arrays(work)
        one = np.zeros(rows, dtype=np.int64)  # the projection's row for row 0 (padding rows: any)
        gx, at = self._table, ids.numpy()
        for k in range(self.layers):
            n = self.above[k]
            above = np.empty((steps, n), dtype=x_bits.dtype) if k + 1 < self.layers else None
            for t in range(steps):
                one[0] = at[t]
                self._fused_layer(k, gx, one, carried[k], arrays, x_bits[k])
                product = _bits(self.products.bare(xs[k], self.stacked[k], outs[k]))
                carried[k] = product[:, n:]
                if above is not None:
                    above[t] = product[0, :n]
            if above is not None:
                gx, at = above, self._positions(steps)
        for w, s in zip(work, state):
            s[:, 0] = w[:, 0]
        self._logits_fn(product, self._b_out, logits.numpy())
        return logits[0].clone()
