"""One step of a trained `CharRNN` as a plain, out-of-place graph, for ONNX export.

``logits, *state = OnnxStep(model)(tokens, *state)``: tokens (B,) int64; state the
cell's tensors, each (L, B, H) (``h`` for rnn and gru, ``h`` and ``c`` for the LSTMs);
logits (B, V). Only MatMul, Gather, Add, Mul, Sigmoid and Tanh appear, so any ONNX
runtime runs it, onnxruntime-web's WebAssembly build included.

The equations are `charnet.cells`' (PyTorch's gate order and GRU reset placement). As
in `charnet.inference.kernel`, the first layer's input projection is a table: the
embedding of every token times W_ih plus its bias, looked up by id. Dropout is absent,
as at inference. With ``dtype=float16`` the weights are stored in half precision (half
the file) and cast to float32 where they are used, so the arithmetic stays float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charnet.model import CharRNN

STATE_NAMES = {"rnn": ("h",), "gru": ("h",), "lstm": ("h", "c"), "peephole": ("h", "c")}
"""The state tensors of each cell, in the order the step takes and returns them."""


class OnnxStep(nn.Module):
    """One generation step of `model` (see the module docstring)."""

    def __init__(self, model: CharRNN, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        cfg = model.config
        self.cell, self.layers = cfg.cell, cfg.layers
        rnn = model.rnn
        peephole = cfg.cell == "peephole"

        def keep(name: str, value: Tensor) -> None:
            # A copy on the CPU: the model itself (a served engine's, say) stays as it is.
            self.register_buffer(name, value.detach().to("cpu", dtype).contiguous())

        with torch.no_grad():
            for k in range(cfg.layers):
                if peephole:
                    w_ih, w_hh, b_ih, peep = rnn.layer(k)
                    b_hh = torch.zeros_like(b_ih)
                    keep(f"peep{k}", peep)
                else:
                    w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
                    b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
                if k == 0:  # the first layer's input projection of every token, precomputed
                    keep("table", F.linear(model.embed.weight.float(), w_ih.float(), b_ih.float()).cpu())
                else:
                    keep(f"w_ih{k}", w_ih.t())
                    keep(f"b_ih{k}", b_ih)
                keep(f"w_hh{k}", w_hh.t())
                keep(f"b_hh{k}", b_hh)
            keep("w_out", model.head.weight.t())
            keep("b_out", model.head.bias)

    def _w(self, name: str) -> Tensor:
        return getattr(self, name).float()

    def forward(self, tokens: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, ...]:
        x = F.embedding(tokens, self._w("table"))  # (B, G*H): layer 0's W_ih x + b_ih
        hs, cs = [], []
        for k in range(self.layers):
            if k:
                x = hs[-1] @ self._w(f"w_ih{k}") + self._w(f"b_ih{k}")
            rec = h[k] @ self._w(f"w_hh{k}") + self._w(f"b_hh{k}")
            if self.cell == "rnn":
                hs.append(torch.tanh(x + rec))
            elif self.cell == "gru":
                x_r, x_z, x_n = x.chunk(3, -1)
                h_r, h_z, h_n = rec.chunk(3, -1)
                r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
                n = torch.tanh(x_n + r * h_n)
                hs.append((1 - z) * n + z * h[k])
            else:
                a_i, a_f, a_g, a_o = (x + rec).chunk(4, -1)
                c_prev = c[k]
                if self.cell == "peephole":
                    p_i, p_f, p_o = self._w(f"peep{k}").unbind(0)
                    a_i, a_f = a_i + p_i * c_prev, a_f + p_f * c_prev
                c_new = torch.sigmoid(a_f) * c_prev + torch.sigmoid(a_i) * torch.tanh(a_g)
                if self.cell == "peephole":
                    a_o = a_o + p_o * c_new
                hs.append(torch.sigmoid(a_o) * torch.tanh(c_new))
                cs.append(c_new)
        logits = hs[-1] @ self._w("w_out") + self._w("b_out")
        return (logits, torch.stack(hs)) + ((torch.stack(cs),) if cs else ())
