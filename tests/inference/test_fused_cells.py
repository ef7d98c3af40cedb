"""The compiled cells' arithmetic: their tanh against float64, their bfloat16 conversion
against PyTorch's, both through a real rnn layer (h = tanh(table row), written to x)."""

from __future__ import annotations

import numpy as np
import torch

from charnet.inference.fused_cells import rnn


def rnn_layer(values: np.ndarray, x_dtype) -> tuple[np.ndarray, np.ndarray]:
    """tanh of `values` (R, H) as an rnn layer computes it with zero biases and a zero
    product: (h, x)."""
    rows, hidden = values.shape
    zeros = np.zeros(hidden, dtype=np.float32)
    h = np.zeros((1, rows, hidden), dtype=np.float32)
    x = np.zeros((rows, hidden), dtype=x_dtype)
    rnn(values.astype(np.float32), np.arange(rows, dtype=np.int64), zeros, np.zeros((rows, hidden), np.float32),
        zeros, 0, h, x)
    return h[0], x


def test_tanh_within_three_ulp_everywhere():
    grid = np.concatenate([np.linspace(-12, 12, 400_003), np.geomspace(1e-30, 12, 100_000),
                           -np.geomspace(1e-30, 12, 100_000)]).astype(np.float32)
    values = np.resize(grid, (len(grid) // 500 + 1) * 500).reshape(-1, 500)  # 500 columns: a scalar remainder too
    h, _ = rnn_layer(values, np.float32)
    exact = np.tanh(values.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert (np.abs(h - exact) / ulp).max() <= 3


def test_tanh_edges():
    values = np.array([[0.0, 1e-38, -1e-30, 40.0, -40.0, np.inf, -np.inf, np.nan, 3e38]], dtype=np.float32)
    h, _ = rnn_layer(values, np.float32)
    assert list(h[0, :3]) == [0, np.float32(1e-38), np.float32(-1e-30)]  # tanh x = x near 0, no underflow
    assert list(h[0, 3:7]) == [1, -1, 1, -1] and np.isnan(h[0, 7]) and h[0, 8] == 1


def test_bfloat16_conversion_rounds_as_torch_does():
    g = torch.Generator().manual_seed(0)
    values = (torch.randn(64, 512, generator=g) * 3).numpy()
    h, x = rnn_layer(values, np.int16)
    expected = torch.from_numpy(h).to(torch.bfloat16).view(torch.int16).numpy()
    assert np.array_equal(x, expected)
    nan, _ = rnn_layer(np.full((1, 8), np.nan, dtype=np.float32), np.float32)
    _, x = rnn_layer(np.full((1, 8), np.nan, dtype=np.float32), np.int16)
    assert np.isnan(nan).all() and (x.view(np.uint16) & 0x7FFF == 0x7FC0).all()
