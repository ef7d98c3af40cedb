"""The single-step kernel computes the model, row by row, independently of its batch."""

from __future__ import annotations

import pytest
import torch

from charnet.config import ModelConfig
from charnet.kernel import StepKernel, padded_rows
from charnet.model import CharRNN

V, T = 23, 40
CELLS = ["rnn", "lstm", "peephole", "gru"]


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


@pytest.mark.parametrize("cell", CELLS)
def test_step_computes_the_model(cell):
    m = model(cell)
    ids = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, _ = m(ids.unsqueeze(0))
    torch.testing.assert_close(stepped(StepKernel(m), ids, 8, 0), reference[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_rows_do_not_depend_on_their_batch(cell):
    """Bit for bit: what a sequence computes alone it computes among 63 strangers."""
    kernel = StepKernel(model(cell, hidden=128))
    ids = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(2))
    alone = stepped(kernel, ids, 8, 0)
    for rows, row in [(16, 9), (64, 37), (256, 255)]:
        assert torch.equal(stepped(kernel, ids, rows, row, seed=rows), alone), rows


@pytest.mark.parametrize("cell", CELLS)
def test_priming_whole_in_pieces_and_stepping_agree(cell):
    kernel = StepKernel(model(cell))
    ids = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(3))
    whole = kernel.zero_state(1)
    logits_whole = kernel.prime(ids, whole)
    pieces = kernel.zero_state(1)
    kernel.prime(ids[:7], pieces)
    kernel.prime(ids[7:30], pieces)
    logits_pieces = kernel.prime(ids[30:], pieces)
    assert torch.equal(logits_whole, logits_pieces)
    assert all(torch.equal(a, b) for a, b in zip(whole, pieces))
    assert torch.equal(stepped(kernel, ids, 8, 0)[-1], logits_whole)


def test_padded_rows():
    assert [padded_rows(n) for n in (1, 8, 9, 64, 65)] == [8, 8, 16, 64, 72]
