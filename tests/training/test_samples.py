"""Samples while training: shown and recorded, and the weights are those of a run without them."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from charnet.config import ModelConfig, TrainConfig
from charnet.training.data import load_corpus
from charnet.training.trainer import Trainer


def run(corpus, out, **train):
    model_cfg = ModelConfig(vocab_size=corpus.vocab.size, cell="lstm", hidden=32, embedding=16, layers=2, dropout=0.2)
    cfg = TrainConfig(batch_size=8, seq_len=32, warmup_steps=5, device="cpu", max_steps=40, eval_every=20, **train)
    return Trainer(corpus, model_cfg, cfg, out).fit()


def test_samples_are_recorded_and_leave_the_weights_unchanged(small_corpus, tmp_path, capsys):
    corpus = load_corpus([small_corpus])
    run(corpus, tmp_path / "plain", samples=0)
    run(corpus, tmp_path / "sampled", samples=3, sample_every=10, sample_chars=50, sample_prompt="ROMEO:")
    a = load_file(tmp_path / "plain" / "last" / "model.safetensors")
    b = load_file(tmp_path / "sampled" / "last" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    records = [json.loads(line) for line in (tmp_path / "sampled" / "metrics.jsonl").read_text().splitlines()]
    drawn = [r for r in records if "samples" in r]
    assert [r["step"] for r in drawn] == [10, 20, 30, 40]
    assert all(len(r["samples"]) == 3 and all(0 < len(t) <= 50 for t in r["samples"]) for r in drawn)
    assert drawn[0]["samples"] != drawn[-1]["samples"]  # the weights moved on
    assert "step 40 samples:" in capsys.readouterr().out
    plain = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert not any("samples" in r for r in plain)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("elapsed_s", "chars_per_s")}  # noqa: E731
                        for r in rs if "samples" not in r]
    assert strip(records) == strip(plain)  # the same losses, step by step


def test_the_same_seed_draws_the_same_samples(small_corpus, tmp_path):
    corpus = load_corpus([small_corpus])
    for name in ("a", "b"):
        run(corpus, tmp_path / name, samples=2, sample_chars=30)
    texts = [[r["samples"] for r in map(json.loads, (tmp_path / n / "metrics.jsonl").read_text().splitlines())
              if "samples" in r] for n in ("a", "b")]
    assert texts[0] == texts[1] and len(texts[0]) == 2
