"""The element-wise part of a generation step compiled to one native loop per layer (numba).

`charnet.inference.kernel.StepKernel` leaves the matrix products of a step to oneDNN or
BLAS; what remains per layer (adding the biases, the gate non-linearities, the cell
update, and converting the new h to the products' dtype for the next product) would be a
dozen small ATen calls, each a few microseconds of dispatch for a few hundred numbers.
Here it is one call of a loop that LLVM vectorises.

- **Inputs.** ``gx`` holds the input projection of each row, addressed through ``idx``:
  for the first layer the per-token table (``gx[idx[r]]`` is token ``idx[r]``'s row, so
  the lookup costs nothing), for deeper layers the stacked product of the layer below,
  whose first G columns are this layer's (``idx`` is 0..R-1). ``gh`` is the product of
  the layer's own h. Both come as float32, or as bfloat16 passed as int16 (numpy has no
  bfloat16: the bits are widened here).
- **Arithmetic.** float32 throughout, without fast-math: no reassociation and no fused
  multiply-add, so the vectorised body and the scalar remainder of the loop compute the
  same bits, and a row's result does not depend on its batch (the loop runs the same
  instructions at every column of every row). Sigmoid gates arrive halved, as the
  kernel packs them, and are computed as ``0.5 * tanh(x) + 0.5``.
- **tanh** is computed from expm1 by range reduction and a degree-7 polynomial (within
  3 ulp of the exact value over float32), because LLVM cannot vectorise a call to the C
  library's ``tanhf``: a scalar call per unit costs more than the whole step's products
  for a batch of 64.
- **Conversion** to bfloat16 rounds to nearest even, as PyTorch does.

The compiled code is cached on disk (numba's ``cache=True``), so a new process loads it
in milliseconds instead of compiling it again.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}
"""How every compiled part of the step is compiled. error_model numpy: no divide-by-zero
check, which would keep LLVM from vectorising."""


# -- bits ---------------------------------------------------------------------------------

@intrinsic
def _f32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _bits_from_f32(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


def widen(value):
    """An element of a product's output as float32: itself, or bfloat16 bits (int16) widened."""


@overload(widen, inline="always")
def _widen(value):
    # On scalars, not arrays: indexing inside an overload hides from LLVM that the index
    # is non-negative, and its wraparound check alone made the loops 2.4 times slower.
    if value == types.float32:
        return lambda value: value
    if value == types.int16:
        return lambda value: _f32_from_bits(np.uint32(np.uint16(value)) << np.uint32(16))
    raise TypingError(f"widen: float32 or int16 (bfloat16 bits), got {value}")


def narrow(value, like):
    """float32 `value` as an element of the array `like`: itself, or bfloat16 bits (int16)
    rounded to nearest even."""


@overload(narrow, inline="always")
def _narrow(value, like):
    if like.dtype == types.float32:
        return lambda value, like: value
    if like.dtype == types.int16:
        def to_bf16(value, like):
            bits = _bits_from_f32(value)
            rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            if value != value:  # NaN stays NaN (PyTorch's quiet NaN); rounding could carry it to infinity
                rounded = np.uint32(0x7FC0)
            return np.int16(np.uint16(rounded))
        return to_bf16
    raise TypingError(f"narrow: float32 or int16 (bfloat16 bits) arrays only, got {like.dtype}")


# -- functions ----------------------------------------------------------------------------

_F = np.float32
_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693359375)  # ln 2 in two parts (Cody-Waite): n * _LN2_HI is exact for |n| < 2^12
_LN2_LO = _F(-2.12194440e-4)
_TANH_SATURATES = _F(9.0)  # tanh(9) = 1 - 3e-8, which rounds to 1 in float32


@njit(inline="always", **JIT)
def _expm1_nonpositive(y):
    """exp(y) - 1 for float32 y in [-18, 0]: y = n ln 2 + r with |r| <= ln 2 / 2, so
    exp(y) - 1 = 2^n (expm1(r) + 1) - 1, exact in its last step when n = 0 (small y)."""
    n = np.floor(y * _LOG2E + _F(0.5))
    r = y - n * _LN2_HI - n * _LN2_LO
    p = r * (_F(1) + r * (_F(1 / 2) + r * (_F(1 / 6) + r * (_F(1 / 24) + r * (
        _F(1 / 120) + r * (_F(1 / 720) + r * _F(1 / 5040)))))))
    scale = _f32_from_bits(np.uint32(np.int32(n) + np.int32(127)) << np.uint32(23))  # 2^n
    return scale * p + (scale - _F(1))


@njit(inline="always", **JIT)
def _tanh(x):
    e = _expm1_nonpositive(_F(-2) * min(abs(x), _TANH_SATURATES))
    return math.copysign(-e / (_F(2) + e), x)


@njit(inline="always", **JIT)
def _half_sigmoid(x):
    """sigmoid(2x), the kernel's sigmoid of a halved pre-activation."""
    return _F(0.5) * _tanh(x) + _F(0.5)


# -- cells --------------------------------------------------------------------------------
# Common arguments: gx and idx (the input projection, see the module docstring), bx (G,)
# the bias added to gx, gh (R, G) the product of h, bh (G,) the bias added to gh, k the
# layer, h (and c) the state (L, R, H), updated in place for layer k, and x (R, H) where
# the new h is written in the next product's dtype. Each gate's sum is written out in place:
# the same sum in an inlined helper indexing the arrays made the step 5-15% slower (the
# indexing hides from LLVM that the index is non-negative, see `widen`).

@njit(**JIT)
def rnn(gx, idx, bx, gh, bh, k, h, x):
    hidden = h.shape[2]
    for r in range(gh.shape[0]):
        q = idx[r]
        for j in range(hidden):
            value = _tanh(widen(gx[q, j]) + bx[j] + widen(gh[r, j]) + bh[j])
            h[k, r, j] = value
            x[r, j] = narrow(value, x)


@njit(**JIT)
def gru(gx, idx, bx, gh, bh, k, h, x):
    """r and z halved; n = tanh(x_n + b_in + r * (h_n + b_hn)), h = (h - n) * z + n."""
    hidden = h.shape[2]
    for r in range(gh.shape[0]):
        q = idx[r]
        for j in range(hidden):
            reset = _half_sigmoid(widen(gx[q, j]) + bx[j] + (widen(gh[r, j]) + bh[j]))
            m = hidden + j
            update = _half_sigmoid(widen(gx[q, m]) + bx[m] + (widen(gh[r, m]) + bh[m]))
            m += hidden
            new = _tanh(widen(gx[q, m]) + bx[m] + reset * (widen(gh[r, m]) + bh[m]))
            value = (h[k, r, j] - new) * update + new
            h[k, r, j] = value
            x[r, j] = narrow(value, x)


@njit(**JIT)
def lstm(gx, idx, bx, gh, bh, k, h, c, x):
    """Gates in the kernel's order (i, f, o, g), the first three halved."""
    hidden = h.shape[2]
    for r in range(gh.shape[0]):
        q = idx[r]
        for j in range(hidden):
            i = _half_sigmoid(widen(gx[q, j]) + bx[j] + (widen(gh[r, j]) + bh[j]))
            m = hidden + j
            f = _half_sigmoid(widen(gx[q, m]) + bx[m] + (widen(gh[r, m]) + bh[m]))
            m += hidden
            o = _half_sigmoid(widen(gx[q, m]) + bx[m] + (widen(gh[r, m]) + bh[m]))
            m += hidden
            g = _tanh(widen(gx[q, m]) + bx[m] + (widen(gh[r, m]) + bh[m]))
            cell = c[k, r, j] * f + i * g
            c[k, r, j] = cell
            value = o * _tanh(cell)
            h[k, r, j] = value
            x[r, j] = narrow(value, x)


@njit(**JIT)
def peephole(gx, idx, bx, gh, bh, k, h, c, peep, x):
    """The LSTM whose i and f look at the previous cell state and o at the new one
    (peep (3, H) = halved p_i, p_f, p_o of layer k)."""
    hidden = h.shape[2]
    for r in range(gh.shape[0]):
        q = idx[r]
        for j in range(hidden):
            before = c[k, r, j]
            i = _half_sigmoid(widen(gx[q, j]) + bx[j] + (widen(gh[r, j]) + bh[j]) + before * peep[0, j])
            m = hidden + j
            f = _half_sigmoid(widen(gx[q, m]) + bx[m] + (widen(gh[r, m]) + bh[m]) + before * peep[1, j])
            m += 2 * hidden
            g = _tanh(widen(gx[q, m]) + bx[m] + (widen(gh[r, m]) + bh[m]))
            cell = before * f + i * g
            c[k, r, j] = cell
            m -= hidden
            o = _half_sigmoid(widen(gx[q, m]) + bx[m] + (widen(gh[r, m]) + bh[m]) + cell * peep[2, j])
            value = o * _tanh(cell)
            h[k, r, j] = value
            x[r, j] = narrow(value, x)


CELLS = {"rnn": rnn, "gru": gru, "lstm": lstm, "peephole": peephole}
"""The compiled layer of each cell."""


@njit(**JIT)
def logits(product, bias, out):
    """The output layer's bias: out (R, V) = the first V columns of `product` + bias (V,)
    (one call instead of slicing, widening and adding in ATen: ~10 us a step)."""
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[r, j] = widen(product[r, j]) + bias[j]
