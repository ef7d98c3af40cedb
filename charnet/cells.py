"""The four recurrent cells, stacked, with one interface: ``y, state = rnn(x, state)``.

Shapes: x (B, T, I) batch-first; y (B, T, H) the top layer's h at every step; `state`
a tuple of (L, B, H) tensors: ``(h,)`` for rnn and gru, ``(h, c)`` for the LSTMs.

Notation follows the project's source document, where ``W·[h_{t-1}, x_t]`` is one
matrix applied to h and x stacked; PyTorch stores it as two blocks, ``W_hh h + W_ih x``,
with two biases whose sum is the document's b. Gate blocks are stacked in PyTorch's
order (i, f, g, o) for the LSTMs and (r, z, n) for the GRU.

rnn (`nn.RNN`, tanh):      h_t = tanh(W·[h_{t-1}, x_t] + b)

lstm (`nn.LSTM`):          f_t = σ(W_f·[h_{t-1}, x_t] + b_f)
                           i_t = σ(W_i·[h_{t-1}, x_t] + b_i)
                           C̃_t = tanh(W_C·[h_{t-1}, x_t] + b_C)
                           C_t = f_t * C_{t-1} + i_t * C̃_t
                           o_t = σ(W_o·[h_{t-1}, x_t] + b_o)
                           h_t = o_t * tanh(C_t)

peephole (`PeepholeLSTM`, Gers & Schmidhuber 2000): the LSTM whose gates also look at
the cell state. The source writes f_t = σ(W_f·[C_{t-1}, h_{t-1}, x_t] + b_f), and the
same for i_t, with o_t looking at the new state C_t. In Gers & Schmidhuber's cell the
C block of each W is diagonal: a gate unit sees only its own cell, through one weight
per unit. So W_f·[C_{t-1}, h_{t-1}, x_t] = p_f * C_{t-1} + W_f·[h_{t-1}, x_t] with p_f
a vector (``peephole_l{k}`` rows p_i, p_f, p_o):

                           i_t = σ(W_i·[h_{t-1}, x_t] + p_i * C_{t-1} + b_i)
                           f_t = σ(W_f·[h_{t-1}, x_t] + p_f * C_{t-1} + b_f)
                           C_t = f_t * C_{t-1} + i_t * C̃_t             (C̃_t as above)
                           o_t = σ(W_o·[h_{t-1}, x_t] + p_o * C_t + b_o)
                           h_t = o_t * tanh(C_t)

gru (`nn.GRU`, Cho et al. 2014):
                           r_t = σ(W_r·[h_{t-1}, x_t] + b_r)
                           z_t = σ(W_z·[h_{t-1}, x_t] + b_z)
                           n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
                           h_t = (1 - z_t) * n_t + z_t * h_{t-1}
  Cho et al. reset h before the product, tanh(W x_t + U(r_t * h_{t-1})); PyTorch (like
  cuDNN) resets after it, r_t * (U h_{t-1} + b), which lets all three gates share one
  matrix product per step. Both are "the GRU"; charnet uses PyTorch's placement so
  training runs on the fused kernels, and its tests transcribe that form.

PyTorch's fused modules (cuDNN on GPU, its own fused kernels on CPU) compute rnn, lstm
and gru exactly; the peephole cell has no fused op, so `PeepholeLSTM` projects the
input for all steps in one matrix product, runs the recurrence with one packed
(B, H) x (H, 4H) product per step into preallocated buffers, and has a hand-written
backward pass that does the same in reverse and forms the weight gradients as single
large products after the loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple[Tensor, ...]


class RNN(nn.RNN):
    """`nn.RNN` (tanh) with the charnet state interface."""

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:  # type: ignore[override]
        y, h = super().forward(x, None if state is None else state[0])
        return y, (h,)


class GRU(nn.GRU):
    """`nn.GRU` with the charnet state interface."""

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:  # type: ignore[override]
        y, h = super().forward(x, None if state is None else state[0])
        return y, (h,)


class LSTM(nn.LSTM):
    """`nn.LSTM` with the charnet state interface."""

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:  # type: ignore[override]
        y, (h, c) = super().forward(x, None if state is None else (state[0], state[1]))
        return y, (h, c)


class _PeepholeScan(torch.autograd.Function):
    """One peephole-LSTM layer's recurrence over a whole window.

    Inputs, time-major: xproj (T, B, 4H) = W_ih x_t + b for every step, w_hh (4H, H),
    peep (3, H) = (p_i, p_f, p_o), h0 and c0 (B, H). Returns h for every step (T, B, H)
    and the last cell state (B, H).
    """

    @staticmethod
    def forward(ctx, xproj: Tensor, w_hh: Tensor, peep: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor]:
        steps, batch, four_h = xproj.shape
        hidden = four_h // 4
        hs = xproj.new_empty(steps + 1, batch, hidden)  # hs[t + 1] = h_t
        cs = xproj.new_empty(steps + 1, batch, hidden)  # cs[t + 1] = C_t
        acts = xproj.new_empty(steps, batch, four_h)  # gate activations i, f, C̃, o
        tanh_c = xproj.new_empty(steps, batch, hidden)
        hs[0], cs[0] = h0, c0
        w_t = w_hh.t()
        p_i, p_f, p_o = peep.unbind(0)
        for t in range(steps):
            gates = torch.addmm(xproj[t], hs[t], w_t, out=acts[t])
            i, f, g, o = gates.chunk(4, 1)
            c_prev = cs[t]
            i.addcmul_(c_prev, p_i).sigmoid_()
            f.addcmul_(c_prev, p_f).sigmoid_()
            g.tanh_()
            c = torch.mul(f, c_prev, out=cs[t + 1]).addcmul_(i, g)
            o.addcmul_(c, p_o).sigmoid_()
            torch.mul(o, torch.tanh(c, out=tanh_c[t]), out=hs[t + 1])
        ctx.save_for_backward(w_hh, peep, hs, cs, acts, tanh_c)
        return hs[1:], cs[steps]

    @staticmethod
    def backward(ctx, d_hs: Tensor, d_c_last: Tensor):
        w_hh, peep, hs, cs, acts, tanh_c = ctx.saved_tensors
        steps, batch, four_h = acts.shape
        hidden = four_h // 4
        p_i, p_f, p_o = peep.unbind(0)
        d_pre = torch.empty_like(acts)  # gradients of the gate pre-activations
        dh = torch.zeros_like(hs[0])
        dc = d_c_last.clone()
        for t in reversed(range(steps)):
            i, f, g, o = acts[t].chunk(4, 1)
            d_i, d_f, d_g, d_o = d_pre[t].chunk(4, 1)
            dh += d_hs[t]
            tc = tanh_c[t]
            # o_t = σ(a_o): da_o = dh * tanh(C_t) * o(1 - o)
            torch.mul(dh, tc, out=d_o).mul_(o - o * o)
            # C_t reaches the loss through h_t and through o_t's peephole
            dc.addcmul_(dh * o, 1 - tc * tc).addcmul_(d_o, p_o)
            c_prev = cs[t]
            torch.mul(dc, g, out=d_i).mul_(i - i * i)
            torch.mul(dc, c_prev, out=d_f).mul_(f - f * f)
            torch.mul(dc, i, out=d_g).mul_(1 - g * g)
            dc.mul_(f).addcmul_(d_i, p_i).addcmul_(d_f, p_f)
            torch.mm(d_pre[t], w_hh, out=dh)
        flat = d_pre.view(steps * batch, four_h)
        d_w_hh = flat.t() @ hs[:steps].reshape(steps * batch, hidden)
        d_i, d_f, _, d_o = d_pre.chunk(4, 2)
        d_peep = torch.stack([
            (d_i * cs[:steps]).sum((0, 1)),
            (d_f * cs[:steps]).sum((0, 1)),
            (d_o * cs[1:]).sum((0, 1)),
        ])
        return d_pre, d_w_hh, d_peep, dh, dc


class PeepholeLSTM(nn.Module):
    """Stacked peephole LSTM (see the module docstring for its equations).

    Parameters per layer k, named like `nn.LSTM`'s: ``weight_ih_l{k}`` (4H, I),
    ``weight_hh_l{k}`` (4H, H), ``bias_l{k}`` (4H), ``peephole_l{k}`` (3, H).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers, self.dropout = input_size, hidden_size, num_layers, dropout
        for k in range(num_layers):
            fan_in = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(4 * hidden_size, fan_in)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(4 * hidden_size, hidden_size)))
            self.register_parameter(f"bias_l{k}", nn.Parameter(torch.empty(4 * hidden_size)))
            self.register_parameter(f"peephole_l{k}", nn.Parameter(torch.empty(3, hidden_size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.LSTM's initialisation for the shared parts; peepholes start at zero, so
        # a fresh cell computes exactly a plain LSTM and learns how much to look.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if name.startswith("peephole"):
                nn.init.zeros_(p)
            else:
                nn.init.uniform_(p, -bound, bound)

    def layer(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(weight_ih, weight_hh, bias, peephole) of layer k."""
        return (getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}"),
                getattr(self, f"bias_l{k}"), getattr(self, f"peephole_l{k}"))

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        batch = x.shape[0]
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros)
        h0, c0 = state
        seq = x.transpose(0, 1)  # time-major: each step's slice is contiguous
        hs, cs = [], []
        for k in range(self.num_layers):
            w_ih, w_hh, bias, peep = self.layer(k)
            if k and self.dropout and self.training:
                seq = F.dropout(seq, self.dropout, training=True)
            xproj = F.linear(seq, w_ih, bias)  # (T, B, 4H): every step's input at once
            # The recurrence runs in float32 under any autocast (CUDA's or CPU's bf16):
            # its state is what carries information across hundreds of steps.
            with torch.autocast(x.device.type, enabled=False):
                seq, c_last = _PeepholeScan.apply(xproj.float(), w_hh, peep, h0[k].float(), c0[k].float())
            hs.append(seq[-1])
            cs.append(c_last)
        return seq.transpose(0, 1), (torch.stack(hs), torch.stack(cs))


def make_recurrent(cell: str, input_size: int, hidden: int, layers: int, dropout: float) -> nn.Module:
    """The stacked recurrent network of `cell`, with `dropout` between its layers."""
    between = dropout if layers > 1 else 0.0
    if cell == "peephole":
        return PeepholeLSTM(input_size, hidden, layers, between)
    cls = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[cell]
    return cls(input_size, hidden, layers, batch_first=True, dropout=between)
