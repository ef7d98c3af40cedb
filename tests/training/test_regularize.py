"""AWD-LSTM's regularisers: off, they are today's training bit for bit; on, each does
what it says to training and leaves the weights and inference ordinary."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from charnet.checkpoint import load_checkpoint
from charnet.config import CELLS, ModelConfig, TrainConfig
from charnet.model import CharRNN
from charnet.training.data import load_corpus
from charnet.training.regularize import Regularized, _drop
from charnet.training.trainer import Trainer

EVERY = dict(weight_drop=0.3, locked_dropout=True, input_dropout=0.1, embed_dropout=0.1, ar=1.0, tar=1.0)


def model(cell: str, dropout: float = 0.0, layers: int = 2) -> CharRNN:
    torch.manual_seed(0)
    m = CharRNN(ModelConfig(vocab_size=30, cell=cell, layers=layers, hidden=24, embedding=12, dropout=dropout))
    with torch.no_grad():  # peepholes start at zero; make them count
        for name, p in m.named_parameters():
            if name.startswith("rnn.peephole"):
                p.uniform_(-0.5, 0.5)
    return m.train()


def ids(batch=3, steps=9, seed=1):
    return torch.randint(30, (batch, steps), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cell", CELLS)
def test_with_every_rate_at_zero_the_layer_by_layer_pass_is_the_model(cell):
    """The stack run one layer at a time through weightless one-layer modules computes
    the model's own forward and backward exactly, carried state included."""
    m = model(cell)
    cfg = TrainConfig(max_steps=1, locked_dropout=True)  # on, but with nothing to drop
    x = ids()
    state = tuple(torch.randn(2, 3, 24) for _ in range(m.config.state_tensors))
    logits, new_state = m(x, state)
    logits.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    logits2, new_state2, penalty = Regularized(m, cfg)(x, state)
    logits2.square().sum().backward()
    assert torch.equal(logits, logits2) and all(torch.equal(a, b) for a, b in zip(new_state, new_state2))
    assert float(penalty) == 0.0
    for n, p in m.named_parameters():
        assert torch.equal(grads[n], p.grad), n


def tiny_trainer(corpus_path, out, cell="lstm", **train):
    corpus = load_corpus([corpus_path])
    model_cfg = ModelConfig(vocab_size=corpus.vocab.size, cell=cell, hidden=32, embedding=16, layers=2, dropout=0.0)
    cfg = TrainConfig(batch_size=8, seq_len=32, warmup_steps=5, device="cpu", max_steps=12, eval_every=6, samples=0,
                      **train)
    Trainer(corpus, model_cfg, cfg, out).fit()
    return load_file(out / "last" / "model.safetensors")


@pytest.mark.parametrize("cell", CELLS)
def test_switched_off_they_train_as_today_and_each_on_changes_training(small_corpus, tmp_path, cell):
    today = tiny_trainer(small_corpus, tmp_path / "today", cell)
    # Locked dropout with every rate at zero takes the regularised path and drops nothing.
    zero = tiny_trainer(small_corpus, tmp_path / "zero", cell, locked_dropout=True)
    assert all(torch.equal(today[k], zero[k]) for k in today)
    for name, value in EVERY.items():
        if name == "locked_dropout":
            continue
        on = tiny_trainer(small_corpus, tmp_path / name, cell, **{name: value})
        assert on.keys() == today.keys()  # ordinary weights: no masks, nothing extra
        assert any(not torch.equal(today[k], on[k]) for k in today), name


def test_locked_dropout_shares_one_mask_across_time():
    torch.manual_seed(0)
    x = torch.ones(4, 50, 16)
    locked = _drop(x, 0.5, locked=True)
    assert torch.equal(locked, locked[:, :1].expand_as(locked))  # every step the first one's mask
    assert set(locked.unique().tolist()) == {0.0, 2.0}
    free = _drop(x, 0.5, locked=False)
    assert not torch.equal(free, free[:, :1].expand_as(free))


def test_embedding_dropout_drops_whole_characters():
    m = model("gru")
    seen = {}
    # Regularized feeds one-layer modules, not m.rnn: read the embedded input at the first.
    reg = Regularized(m, TrainConfig(max_steps=1, embed_dropout=0.5))
    reg.layers[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    torch.manual_seed(3)
    x = torch.arange(30).repeat(2, 4)  # every character 8 times
    reg(x)
    embedded = seen["x"]
    table = m.embed.weight.detach()
    dropped = kept = 0
    for char in range(30):
        rows = embedded[x == char]
        if torch.equal(rows, torch.zeros_like(rows)):
            dropped += 1
        else:
            assert torch.allclose(rows, (table[char] * 2).expand_as(rows)), char  # kept: scaled by 1 / (1 - p)
            kept += 1
    assert dropped > 5 and kept > 5


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_masks_the_recurrent_matrix_for_the_whole_window(cell):
    """A dropped connection is absent at every step: its gradient is exactly zero (the
    peephole cell's own scan included), while the input matrix keeps every gradient."""
    m = model(cell, layers=1)
    torch.manual_seed(0)
    logits, _, _ = Regularized(m, TrainConfig(max_steps=1, weight_drop=0.5))(ids(steps=20))
    logits.square().sum().backward()
    hh, ih = m.rnn.weight_hh_l0, m.rnn.weight_ih_l0
    zeros = float((hh.grad == 0).float().mean())
    assert 0.4 < zeros < 0.6, zeros
    assert float((ih.grad == 0).float().mean()) < 0.05
    before = hh.detach().clone()
    Regularized(m, TrainConfig(max_steps=1, weight_drop=0.5))(ids())
    assert torch.equal(before, hh)  # the parameter itself is never masked


def test_ar_and_tar_are_the_documented_penalties():
    m = model("lstm")
    top = {}
    reg = Regularized(m, TrainConfig(max_steps=1, ar=2.0, tar=3.0))
    reg.layers[-1].register_forward_hook(lambda module, args, out: top.update(h=out[0]))
    _, _, penalty = reg(ids())
    h = top["h"]
    expected = 2.0 * h.pow(2).mean() + 3.0 * (h[:, 1:] - h[:, :-1]).pow(2).mean()  # no dropout: out == h
    assert torch.allclose(penalty, expected)
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[0, 4:] = False  # padding scores nothing
    _, _, masked = reg(ids(), valid=valid)
    w = valid.unsqueeze(-1).float()
    pairs = (valid[:, 1:] & valid[:, :-1]).unsqueeze(-1).float()
    expected = (2.0 * (h.pow(2) * w).sum() / (w.sum() * 24)
                + 3.0 * ((h[:, 1:] - h[:, :-1]).pow(2) * pairs).sum() / (pairs.sum() * 24))
    assert torch.allclose(masked, expected)


def test_a_regularised_checkpoint_samples_like_any_other(small_corpus, tmp_path):
    """Inference is unchanged: the checkpoint is an ordinary model, and its eval-mode
    forward is the plain model's, whatever the training recipe was."""
    tiny_trainer(small_corpus, tmp_path / "reg", "gru", **EVERY)
    ckpt = load_checkpoint(tmp_path / "reg" / "last")
    assert ckpt.config["training"]["weight_drop"] == 0.3 and ckpt.config["training"]["tar"] == 1.0
    plain = CharRNN(ckpt.model.config)
    plain.load_state_dict(ckpt.model.state_dict())
    x = ids(seed=4) % ckpt.model.config.vocab_size
    torch.testing.assert_close(ckpt.model.eval()(x)[0], plain.eval()(x)[0], rtol=0, atol=0)
    from charnet.inference.engine import Engine

    engine = Engine(ckpt)
    a, b = (engine.generate("ROMEO:", max_chars=40, seed=1, temperature=0.8).text for _ in range(2))
    assert len(a) == 40 and a == b


def test_settings_are_validated():
    from charnet.errors import ConfigError

    for field, bad in (("weight_drop", 1.0), ("input_dropout", -0.1), ("embed_dropout", "x"), ("ar", -1.0),
                       ("tar", float("inf")), ("locked_dropout", 1)):
        with pytest.raises(ConfigError, match=field):
            dataclasses.replace(TrainConfig(max_steps=1), **{field: bad})
    assert not TrainConfig(max_steps=1).regularized and TrainConfig(max_steps=1, tar=0.5).regularized


def test_penalty_is_not_in_the_logged_loss(small_corpus, tmp_path):
    """AR/TAR shape the gradient only: the first logged loss (same weights, same data)
    is the cross-entropy with or without them."""
    import json

    for name, extra in (("plain", {}), ("ar", {"ar": 50.0, "tar": 50.0})):
        tiny_trainer(small_corpus, tmp_path / name, "rnn", log_every=1, **extra)
    first = [json.loads((tmp_path / n / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
             for n in ("plain", "ar")]
    assert first[0] == first[1]
