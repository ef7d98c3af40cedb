"""The batch keeps going when one sequence fails, and a lone caller still sees the error."""

from __future__ import annotations

import pytest
import torch

from charnet.config import ModelConfig
from charnet.engine import Engine
from charnet.generation import FINISH_ERROR, Sequence
from charnet.model import CharRNN
from charnet.checkpoint import Checkpoint
from charnet.tokenizer import Vocab


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    torch.manual_seed(0)
    vocab = Vocab.from_chars("abcdefghijklmnopqrstuvwxyz ,.:\n")
    model = CharRNN(ModelConfig(vocab_size=vocab.size, hidden=32, embedding=16, layers=2))
    return Engine(Checkpoint(tmp_path_factory.mktemp("ckpt"), model.eval(), vocab, {}))


def _failing_accept(monkeypatch, prompt: str) -> None:
    real = Sequence._accept

    def accept(self, *args):
        if self.request.prompt == prompt and self.generated >= 3:
            raise RuntimeError("injected")
        return real(self, *args)

    monkeypatch.setattr(Sequence, "_accept", accept)


def test_one_failing_sequence_leaves_the_others_untouched(engine, monkeypatch):
    solo = [engine.generate(p, max_chars=30, seed=7).text for p in ("to be", "or not")]
    _failing_accept(monkeypatch, "boom")
    batch = engine.new_batch()
    seqs = [batch.add(engine.request(p, max_chars=30, seed=7))[0] for p in ("to be", "boom", "or not")]
    finishes = {}
    while len(batch):
        for piece in batch.step():
            if piece.finish_reason:
                finishes[piece.seq.request.prompt] = piece.finish_reason
    assert finishes == {"to be": "length", "boom": FINISH_ERROR, "or not": "length"}
    assert isinstance(seqs[1].error, RuntimeError)
    assert [seqs[0].text, seqs[2].text] == solo


def test_generate_and_stream_raise_the_sequence_error(engine, monkeypatch):
    _failing_accept(monkeypatch, "boom")
    with pytest.raises(RuntimeError, match="injected"):
        engine.generate("boom", max_chars=10, seed=1)
    with pytest.raises(RuntimeError, match="injected"):
        list(engine.stream("boom", max_chars=10, seed=1))
