"""The single-step kernel computes the model, row by row, independently of its batch, with
either element-wise path (compiled or PyTorch ops)."""

from __future__ import annotations

import pytest
import torch

from charnet.config import CELLS, ModelConfig
from charnet.device import native_bf16
from charnet.inference.kernel import StepKernel
from charnet.model import CharRNN

V, T = 23, 40
PRECISIONS = ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not native_bf16(torch.device("cpu")), reason="this CPU has no native bfloat16 products"))]
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}
FUSED = [pytest.param(True, id="fused"), pytest.param(False, id="aten")]


def model(cell: str, hidden: int = 48) -> CharRNN:
    torch.manual_seed(len(cell))
    m = CharRNN(ModelConfig(vocab_size=V, cell=cell, hidden=hidden, embedding=16, layers=2, dropout=0.0)).eval()
    with torch.no_grad():
        for name, p in m.rnn.named_parameters():
            if name.startswith("peephole"):
                p.uniform_(-0.5, 0.5)  # peepholes start at zero; make them count
    return m


def stepped(kernel: StepKernel, ids: torch.Tensor, rows: int, row: int, seed: int = 0) -> torch.Tensor:
    """Logits of `ids` fed one at a time through `row` of a batch of random neighbours."""
    state = kernel.zero_state(rows)
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(len(ids)):
        tokens = torch.randint(0, V, (rows,), generator=g)
        tokens[row] = ids[t]
        out.append(kernel.step(tokens, state)[row].clone())
    return torch.stack(out)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("fused", FUSED)
def test_step_computes_the_model(cell, precision, fused):
    m = model(cell)
    kernel = StepKernel(m, precision, fused)
    ids = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, _ = m(ids.unsqueeze(0))
    tol = TOLERANCE[precision]
    torch.testing.assert_close(stepped(kernel, ids, kernel.rows(1), 0), reference[0], atol=tol, rtol=tol)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("fused", FUSED)
def test_rows_do_not_depend_on_their_batch(cell, precision, fused):
    """Bit for bit: what a sequence computes alone it computes among 63 strangers."""
    kernel = StepKernel(model(cell, hidden=128), precision, fused)
    ids = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(2))
    alone = stepped(kernel, ids, kernel.rows(1), 0)
    for rows, row in [(16, 9), (64, 37), (256, 255)] + ([(3, 2), (13, 5)] if precision == "bfloat16" else []):
        assert torch.equal(stepped(kernel, ids, rows, row, seed=rows), alone), rows


@pytest.mark.parametrize("precision", PRECISIONS[1:])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("fused", FUSED)
def test_bfloat16_rows_do_not_depend_on_the_number_of_threads(cell, precision, fused):
    """Bit for bit on 1, 2 or 3 torch threads (float32 products can sum in another order
    on 3, so the engine process checks its own model: `charnet.server.core.threads.same_bits`)."""
    kernel = StepKernel(model(cell, hidden=256), precision, fused)
    ids = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = stepped(kernel, ids, 64, 37)
        for threads in (2, 3):
            torch.set_num_threads(threads)
            assert torch.equal(stepped(kernel, ids, 64, 37), one), threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("fused", FUSED)
def test_priming_whole_in_pieces_and_stepping_agree(cell, precision, fused):
    kernel = StepKernel(model(cell), precision, fused)
    ids = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(3))
    whole = kernel.zero_state(1)
    logits_whole = kernel.prime(ids, whole)
    pieces = kernel.zero_state(1)
    kernel.prime(ids[:7], pieces)
    kernel.prime(ids[7:30], pieces)
    logits_pieces = kernel.prime(ids[30:], pieces)
    assert torch.equal(logits_whole, logits_pieces)
    assert all(torch.equal(a, b) for a, b in zip(whole, pieces))
    assert torch.equal(stepped(kernel, ids, kernel.rows(1), 0)[-1], logits_whole)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("fused", FUSED)
def test_prompts_of_any_length_prime_with_few_product_shapes(precision, fused):
    """oneDNN keeps about 1 MB for each product shape it has run: prompts of 1 to 150
    characters must not each leave one behind."""
    kernel = StepKernel(model("gru"), precision, fused)
    rows = set()
    for name, x in (("bare", 0), ("affine", 2)):  # where each takes the product's left side
        product = getattr(kernel.products, name)

        def recorded(*args, product=product, x=x):
            rows.add(args[x].shape[0])
            return product(*args)
        setattr(kernel.products, name, recorded)
    for length in range(1, 151):
        kernel.prime(torch.randint(0, V, (length,), generator=torch.Generator().manual_seed(length)),
                     kernel.zero_state(1))
    assert rows <= {kernel.rows(1)} | {1 << k for k in range(9)}, sorted(rows)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_a_fused_step_is_one_product_per_layer(cell, precision):
    """Each product has a fixed cost (about 16 us in oneDNN) that a single stream pays
    per call: a layer's h meets the next layer's input weights (or the output layer) and
    its own recurrent weights in one product, whose second half the state carries."""
    m = CharRNN(ModelConfig(vocab_size=V, cell=cell, hidden=32, embedding=16, layers=3, dropout=0.0)).eval()
    kernel = StepKernel(m, precision, fused=True)
    calls = []
    product = kernel.products.bare
    kernel.products.bare = lambda *args: calls.append(args[0].shape) or product(*args)
    state = kernel.zero_state(kernel.rows(1))
    kernel.step(torch.zeros(kernel.rows(1), dtype=torch.long), state)
    assert len(calls) == 3
    assert len(state) == m.config.state_tensors + 1 and state[-1].shape == (3, kernel.rows(1), kernel.gates * 32)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_and_aten_steps_agree_to_rounding(cell, precision):
    """Not bit for bit (the compiled tanh is a polynomial of its own), but within float32
    rounding over 40 steps, and in the same row order."""
    m = model(cell)
    ids = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(4))
    fused, aten = (StepKernel(m, precision, f) for f in (True, False))
    tol = 1e-4 if precision == "float32" else TOLERANCE[precision]
    torch.testing.assert_close(stepped(fused, ids, 16, 9), stepped(aten, ids, 16, 9), atol=tol, rtol=tol)


def test_the_fused_step_is_the_default_on_the_cpu_and_can_be_turned_off(monkeypatch):
    m = model("gru")
    assert StepKernel(m).fused
    monkeypatch.setenv("CHARNET_FUSED_STEP", "0")
    assert not StepKernel(m).fused
    with pytest.raises(ValueError, match="CHARNET_FUSED_STEP"):
        StepKernel(m, fused=True)


def test_rows():
    m = model("lstm")
    assert [StepKernel(m, "float32").rows(n) for n in (1, 8, 9, 64, 65)] == [8, 8, 16, 64, 72]
    assert [StepKernel(m, "bfloat16").rows(n) for n in (1, 8, 9)] == [1, 8, 9]
