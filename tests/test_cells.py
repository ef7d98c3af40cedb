"""Each cell computes its equations: a direct transcription with plain tensor ops, step by
step, from the module's own weights, must match the module's outputs and final states."""

from __future__ import annotations

import pytest
import torch

from charnet.cells import PeepholeLSTM, _PeepholeScan, make_recurrent
from charnet.config import CELLS, ModelConfig
from charnet.model import CharRNN

B, T, I, H = 3, 7, 5, 6
TOL = dict(atol=1e-5, rtol=1e-5)


def W(rnn, k: int, gate: int, n_gates: int):
    """The document's W_gate for layer k: the gate's rows of [W_hh | W_ih], acting on [h, x]."""
    hh = getattr(rnn, f"weight_hh_l{k}")
    ih = getattr(rnn, f"weight_ih_l{k}")
    rows = slice(gate * H, (gate + 1) * H)
    return torch.cat([hh[rows], ih[rows]], dim=1)


def b(rnn, k: int, gate: int):
    rows = slice(gate * H, (gate + 1) * H)
    if hasattr(rnn, f"bias_l{k}"):
        return getattr(rnn, f"bias_l{k}")[rows]
    return getattr(rnn, f"bias_ih_l{k}")[rows] + getattr(rnn, f"bias_hh_l{k}")[rows]


def sigma(v):
    return 1 / (1 + torch.exp(-v))


def reference(cell: str, rnn, x: torch.Tensor, layers: int):
    """Outputs (B, T, H) and final states, from the equations in charnet/cells.py."""
    seq = x
    finals_h, finals_c = [], []
    for k in range(layers):
        h = torch.zeros(B, H)
        c = torch.zeros(B, H)
        outs = []
        for t in range(T):
            xt = seq[:, t]
            hx = torch.cat([h, xt], dim=1)  # [h_{t-1}, x_t]
            if cell == "rnn":
                h = torch.tanh(hx @ W(rnn, k, 0, 1).T + b(rnn, k, 0))
            elif cell == "lstm":  # PyTorch gate order i, f, g(C̃), o
                f = sigma(hx @ W(rnn, k, 1, 4).T + b(rnn, k, 1))
                i = sigma(hx @ W(rnn, k, 0, 4).T + b(rnn, k, 0))
                c_tilde = torch.tanh(hx @ W(rnn, k, 2, 4).T + b(rnn, k, 2))
                c = f * c + i * c_tilde
                o = sigma(hx @ W(rnn, k, 3, 4).T + b(rnn, k, 3))
                h = o * torch.tanh(c)
            elif cell == "peephole":
                p_i, p_f, p_o = getattr(rnn, f"peephole_l{k}")
                i = sigma(hx @ W(rnn, k, 0, 4).T + p_i * c + b(rnn, k, 0))
                f = sigma(hx @ W(rnn, k, 1, 4).T + p_f * c + b(rnn, k, 1))
                c_tilde = torch.tanh(hx @ W(rnn, k, 2, 4).T + b(rnn, k, 2))
                c = f * c + i * c_tilde
                o = sigma(hx @ W(rnn, k, 3, 4).T + p_o * c + b(rnn, k, 3))
                h = o * torch.tanh(c)
            elif cell == "gru":  # PyTorch gate order r, z, n; reset applied after W_hn h
                r = sigma(hx @ W(rnn, k, 0, 3).T + b(rnn, k, 0))
                z = sigma(hx @ W(rnn, k, 1, 3).T + b(rnn, k, 1))
                rows = slice(2 * H, 3 * H)
                n = torch.tanh(xt @ getattr(rnn, f"weight_ih_l{k}")[rows].T + getattr(rnn, f"bias_ih_l{k}")[rows]
                               + r * (h @ getattr(rnn, f"weight_hh_l{k}")[rows].T + getattr(rnn, f"bias_hh_l{k}")[rows]))
                h = (1 - z) * n + z * h
            outs.append(h)
        seq = torch.stack(outs, dim=1)
        finals_h.append(h)
        finals_c.append(c)
    return seq, torch.stack(finals_h), torch.stack(finals_c)


def randomized(cell: str, layers: int, input_size: int = I):
    torch.manual_seed(layers * 100 + len(cell))
    rnn = make_recurrent(cell, input_size, H, layers, dropout=0.0).eval()
    with torch.no_grad():
        for p in rnn.parameters():
            p.uniform_(-0.5, 0.5)  # peepholes start at zero; make every term count
    return rnn


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_cell_computes_its_equations(cell, layers):
    rnn = randomized(cell, layers)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        y, state = rnn(x)
        ref_y, ref_h, ref_c = reference(cell, rnn, x, layers)
    assert y.shape == (B, T, H)
    torch.testing.assert_close(y, ref_y, **TOL)
    torch.testing.assert_close(state[0], ref_h, **TOL)
    if cell in ("lstm", "peephole"):
        torch.testing.assert_close(state[1], ref_c, **TOL)
    else:
        assert len(state) == 1


@pytest.mark.parametrize("cell", CELLS)
def test_state_carries_across_windows(cell):
    """Running two windows with the state carried equals running their concatenation."""
    rnn = randomized(cell, 2)
    x = torch.randn(B, 2 * T, I)
    with torch.no_grad():
        whole, s_whole = rnn(x)
        first, s1 = rnn(x[:, :T])
        second, s2 = rnn(x[:, T:], s1)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, **TOL)
    for a, b_ in zip(s2, s_whole):
        torch.testing.assert_close(a, b_, **TOL)


def test_peephole_with_zero_peepholes_is_the_lstm():
    """A fresh peephole cell (peepholes at zero) computes exactly nn.LSTM with its weights."""
    torch.manual_seed(0)
    peep = PeepholeLSTM(I, H, 2).eval()
    lstm = make_recurrent("lstm", I, H, 2, 0.0).eval()
    with torch.no_grad():
        for k in range(2):
            getattr(lstm, f"weight_ih_l{k}").copy_(getattr(peep, f"weight_ih_l{k}"))
            getattr(lstm, f"weight_hh_l{k}").copy_(getattr(peep, f"weight_hh_l{k}"))
            getattr(lstm, f"bias_ih_l{k}").copy_(getattr(peep, f"bias_l{k}"))
            getattr(lstm, f"bias_hh_l{k}").zero_()
        x = torch.randn(B, T, I)
        y1, (h1, c1) = peep(x)
        y2, (h2, c2) = lstm(x)
    torch.testing.assert_close(y1, y2, **TOL)
    torch.testing.assert_close(c1, c2, **TOL)


def test_peephole_backward_matches_numerical_gradients():
    torch.manual_seed(0)
    d = dict(dtype=torch.float64, requires_grad=True)
    args = (torch.randn(4, 2, 12, **d), (0.5 * torch.randn(12, 3, dtype=torch.float64)).requires_grad_(),
            torch.randn(3, 3, **d), torch.randn(2, 3, **d), torch.randn(2, 3, **d))
    assert torch.autograd.gradcheck(_PeepholeScan.apply, args)


def test_peephole_module_gradients_match_autograd_of_the_equations():
    rnn = randomized("peephole", 2)
    x = torch.randn(B, T, I, requires_grad=True)
    y, (h, c) = rnn(x)
    (y.square().sum() + c.sum()).backward()
    got = [p.grad.clone() for p in rnn.parameters()] + [x.grad.clone()]
    rnn.zero_grad()
    x.grad = None
    ref_y, _, ref_c = reference("peephole", rnn, x, 2)
    (ref_y.square().sum() + ref_c.sum()).backward()
    want = [p.grad for p in rnn.parameters()] + [x.grad]
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_model_is_embedding_cells_and_head(cell):
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=H, embedding=I, dropout=0.3)).eval()
    idx = torch.randint(0, 11, (B, T))
    with torch.no_grad():
        logits, state = model(idx)
        y, _, _ = reference(cell, model.rnn, model.embed(idx), 2)
    torch.testing.assert_close(logits, y @ model.head.weight.T + model.head.bias, **TOL)
    assert len(state) == ModelConfig(vocab_size=11, cell=cell).state_tensors
    assert all(s.shape == (2, B, H) for s in state)


def test_tied_embeddings_share_one_matrix():
    model = CharRNN(ModelConfig(vocab_size=20, hidden=16, embedding=16, tie_embeddings=True))
    assert model.head.weight is model.embed.weight
    untied = CharRNN(ModelConfig(vocab_size=20, hidden=16, embedding=16))
    assert model.num_parameters() == untied.num_parameters() - 20 * 16
