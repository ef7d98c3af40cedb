"""Line documents: each row is one document from the start-of-document state, epochs are
shuffled by the seed, and validation scores every held-out line exactly once."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from charnet.config import ModelConfig, TrainConfig
from charnet.documents import text_lines, validation_lines
from charnet.inference.engine import Engine
from charnet.training.data import IGNORE, load_corpus
from charnet.training.line_batches import LineBatches, LineDocuments, LineEval
from charnet.training.trainer import Trainer

NAMES = ["Ada", "Grace", "Hedy", "Barbara", "Frances", "Radia", "Margaret", "Katherine", "Evelyn", "Joan",
         "Mary", "Sophie", "Annie", "Lynn", "Karen", "Shafi", "Jean", "Betty", "Kathleen", "Marlyn"]


@pytest.fixture
def names(tmp_path):
    path = tmp_path / "names.txt"
    # Windows line ends, blank lines and a very long line: all must be handled.
    lines = [*NAMES * 5, "", "x" * 300]
    path.write_bytes("\r\n".join(lines).encode())
    return path


def documents(path, val_fraction=0.1):
    corpus = load_corpus([path], separator="\n", require="\n")
    return corpus, LineDocuments(corpus.ids, corpus.vocab, val_fraction)


def test_documents_are_the_non_empty_lines_without_their_cr(names):
    corpus, docs = documents(names)
    text = names.read_bytes().decode()
    assert len(docs) == len(text_lines(text)) == 101
    decoded = [corpus.vocab.decode(corpus.ids[s:s + n]) for s, n in zip(docs.starts, docs.lengths)]
    assert decoded == text_lines(text) and "\r" not in "".join(decoded)
    assert docs.held.sum() == 10 and np.array_equal(docs.held, validation_lines(101, 0.1))


def epoch_lines(corpus, plan) -> tuple[list[str], int]:
    """The lines an epoch's plan trains on (checking each row's start and end), and how
    many of its windows carry the state on from the one before."""
    newline = corpus.vocab.token_id("\n")
    seen, carried = [], 0
    for k in range(len(plan)):
        x, y = plan.batch(k)
        if plan.fresh(k):
            assert (x[:, 0] == newline).all()  # every document starts after a line break, from the zero state
            rows = [[] for _ in range(len(x))]
        else:
            carried += 1
        for row in range(len(x)):
            rows[row] += [t for t in y[row].tolist() if t != IGNORE]
        if k + 1 == len(plan) or plan.fresh(k + 1):
            for ids in rows:
                assert ids[-1] == newline and newline not in ids[:-1]  # and learns to end with one
                seen.append(corpus.vocab.decode(ids[:-1]))
    return seen, carried


def test_every_row_starts_after_a_line_break_and_learns_to_end(names):
    corpus, docs = documents(names, val_fraction=0.0)
    lines = text_lines(names.read_bytes().decode())
    batches = LineBatches(docs, batch_size=8, seq_len=16, seed=3)
    epochs = [epoch_lines(corpus, batches.epoch(e)) for e in range(6)]
    for seen, _ in epochs:
        # Every line once, but for those of a last partial batch (101 = 12 x 8 + 5).
        assert len(seen) == 96 and not Counter(seen) - Counter(lines)
    assert len({tuple(seen) for seen, _ in epochs}) == 6
    with_long = [carried for seen, carried in epochs if "x" * 300 in seen]
    assert with_long and all(carried >= 18 for carried in with_long)  # 301 targets: 19 windows of 16


def test_the_shuffle_is_seeded_per_epoch(names):
    _, docs = documents(names)

    def order(seed, epoch):
        plan = LineBatches(docs, batch_size=8, seq_len=16, seed=seed).epoch(epoch)
        return [tuple(b) for b in plan.batches]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 1) != order(2, 1)
    # Two processes hold the two halves of the single process' rows.
    one = LineBatches(docs, batch_size=8, seq_len=16, seed=1).epoch(0).batches
    halves = [LineBatches(docs, batch_size=4, seq_len=16, seed=1, rank=r, world_size=2).epoch(0).batches for r in (0, 1)]
    assert all(np.array_equal(b, np.concatenate([h0, h1])) for b, h0, h1 in zip(one, *halves))


def test_validation_scores_every_held_out_line_once(names):
    corpus, docs = documents(names)
    val = LineEval(docs, batch_size=4, seq_len=8)
    held = docs.part(validation=True)
    assert val.targets == int((docs.lengths[held] + 1).sum())
    scored = sum(int((val.batch(k)[1] != IGNORE).sum()) for k in range(len(val)))
    assert scored == val.targets
    shards = [LineEval(docs, batch_size=4, seq_len=8, rank=r, world_size=3) for r in range(3)]
    assert sum(s.targets for s in shards) == val.targets
    assert LineEval(docs, batch_size=4, seq_len=8, max_chars=10).targets < val.targets


def test_too_few_lines(tmp_path):
    path = tmp_path / "few.txt"
    path.write_text("a\nb\nc\n")
    corpus = load_corpus([path], separator="\n", require="\n")
    with pytest.raises(Exception, match="fewer than one batch"):
        LineBatches(LineDocuments(corpus.ids, corpus.vocab, 0.0), batch_size=8, seq_len=8, seed=1)
    with pytest.raises(Exception, match="validation split would hold no lines"):
        LineDocuments(corpus.ids, corpus.vocab, 0.1)


def test_an_empty_prompt_primes_the_start_of_a_document(names, tmp_path):
    corpus = load_corpus([names], separator="\n", require="\n")
    cfg = TrainConfig(batch_size=8, seq_len=16, max_steps=30, eval_every=30, device="cpu", documents="lines", samples=2)
    model_cfg = ModelConfig(vocab_size=corpus.vocab.size, cell="gru", hidden=32, embedding=16, layers=1)
    Trainer(corpus, model_cfg, cfg, tmp_path / "run").fit()
    config = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert config["corpus"]["documents"] == "lines" and config["corpus"]["document_start"] == "\n"
    engine = Engine.open(tmp_path / "run" / "last")
    for seed in range(5):
        empty = engine.generate("", max_chars=40, seed=seed, stop=["\n"])
        assert empty.text == engine.generate("\n", max_chars=40, seed=seed, stop=["\n"]).text
        assert "\n" not in empty.text
