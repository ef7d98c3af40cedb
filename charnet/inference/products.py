"""The step kernel's matrix products, x @ w.T, in its precision (`charnet.inference.kernel`).

float32 products are BLAS calls that write into the kernel's buffers. bfloat16 ones are
oneDNN's, on weights packed once into its own layout where this build of PyTorch offers
that: a product then skips the per-call reorder of the weights, nearly halving a single
stream's step. Either way a row's bits do not depend on the rows beside it (the kernel
pads float32 batches to make sure of it).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Products:
    """x @ w.T against weights `pack` prepared, with or without a bias, in `dtype`
    (float32 or bfloat16); x is float32, or already bfloat16 where `bare` takes it."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._linear = torch.nn.functional.linear
        """bfloat16's product: oneDNN's packed linear once a weight has been packed for it."""

    def pack(self, w: Tensor) -> Tensor:
        """A float32 (out, in) weight matrix in the form the products read."""
        if self.dtype is torch.float32:
            return w.contiguous()
        w = w.to(torch.bfloat16).contiguous()
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        except (AttributeError, RuntimeError):  # a build without oneDNN's packed linear
            return w
        linear = torch.ops.mkldnn._linear_pointwise.default  # looked up once: a few us a call
        self._linear = lambda x, p: linear(x, p, None, "none", [], "")
        return packed

    def affine(self, out: Tensor, bias: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """out = bias + x @ w.T."""
        if self.dtype is torch.float32:
            return torch.addmm(bias, x, w.t(), out=out)
        return torch.add(bias, self._linear(x.to(torch.bfloat16), w), out=out)

    def accumulate(self, out: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """out += x @ w.T."""
        if self.dtype is torch.float32:
            return out.addmm_(x, w.t())
        return out.add_(self._linear(x.to(torch.bfloat16), w))

    def bare(self, x: Tensor, w: Tensor, out: Tensor) -> Tensor:
        """x @ w.T without a bias: into `out` in float32, a new bfloat16 tensor in bf16
        (where x is bfloat16 already)."""
        if self.dtype is torch.float32:
            return torch.mm(x, w.t(), out=out)
        return self._linear(x, w)
