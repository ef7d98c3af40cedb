"""The kernel's matrix products in each precision: x @ w.T with and without a bias, on
the weights as `pack` prepared them, and a row's result whatever rows are beside it."""

from __future__ import annotations

import pytest
import torch

from charnet.device import native_bf16
from charnet.inference.products import Products

DTYPES = {"float32": (torch.float32, 1e-5), "bfloat16": (torch.bfloat16, 2e-2)}
PRECISIONS = ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not native_bf16(torch.device("cpu")), reason="this CPU has no native bfloat16 products"))]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_products_compute_x_times_w_transposed(precision):
    dtype, tolerance = DTYPES[precision]
    g = torch.Generator().manual_seed(0)
    w, x, bias = torch.randn(48, 32, generator=g), torch.randn(8, 32, generator=g), torch.randn(48, generator=g)
    products = Products(dtype)
    packed = products.pack(w)
    want = x @ w.T
    assert torch.allclose(products.affine(torch.empty(8, 48), bias, x, packed), want + bias, atol=tolerance * 8)
    out = torch.ones(8, 48)
    assert torch.allclose(products.accumulate(out, x, packed), want + 1, atol=tolerance * 8)
    bare = products.bare(x.to(dtype), packed, torch.empty(8, 48))
    assert bare.dtype == dtype and torch.allclose(bare.float(), want, atol=tolerance * 8)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_row_gets_the_same_bits_beside_any_rows(precision):
    """Batch invariance, which the engine's output depends on: in bfloat16 for any row
    count; in float32 from 8 rows on (the kernel pads batches to multiples of 8)."""
    dtype, _ = DTYPES[precision]
    g = torch.Generator().manual_seed(1)
    products = Products(dtype)
    w = products.pack(torch.randn(96, 64, generator=g))
    x = torch.randn(64, 64, generator=g).to(dtype)
    alone = products.bare(x[:8], w, torch.empty(8, 96))[0].clone()
    beside = products.bare(x, w, torch.empty(64, 96))[0]
    assert torch.equal(alone, beside)
