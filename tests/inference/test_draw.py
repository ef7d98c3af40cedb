"""A batch's tokens drawn from its tables (`draw`): the compiled sampler and PyTorch's draw
the same tokens from the same tables, never the unknown id, and rows that ask get the
model's log-probabilities of what they drew."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from charnet.inference.draw import draw, fused_sampling
from charnet.inference.sampling import BatchParams, SamplingParams
from charnet.tokenizer import Vocab

VOCAB = Vocab.from_chars("abcdefghijklmnopqrstuvwxyz")
SETTINGS = [{}, {"temperature": 0.7, "top_k": 5}, {"top_p": 0.9, "repetition_penalty": 1.3},
            {"temperature": 0}, {"frequency_penalty": 0.5, "presence_penalty": 0.2}]


def tables(rows: int = 8, seed: int = 0):
    """(logits, recent, counts) of a batch of `rows` rows, the unknown id the likeliest in each."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, VOCAB.size, generator=g) * 2
    logits[:, VOCAB.unk_id] = 50.0
    recent = (torch.rand(rows, VOCAB.size, generator=g) < 0.2).float()
    counts = torch.randint(0, 3, (rows, VOCAB.size), generator=g).float()
    return logits, recent, counts


def sequences(n: int, logprobs: list[int | None] | None = None) -> list:
    """What `draw` reads of a sequence: its seed, its step and how many alternatives it wants."""
    wants = logprobs or [None] * n
    return [SimpleNamespace(seed=100 + i, generated=3 * i, request=SimpleNamespace(logprobs=w))
            for i, w in enumerate(wants)]


@pytest.mark.skipif(fused_sampling is None, reason="numba is not installed")
@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4, 5], [1, 4, 5]])  # every row in use, or some of them
def test_the_compiled_sampler_and_pytorch_draw_the_same_tokens_never_the_unknown_id(rows):
    seqs = sequences(len(rows))
    params = BatchParams.of([SamplingParams(**SETTINGS[i % len(SETTINGS)]) for i in range(len(rows))], VOCAB.size)
    fused, _ = draw(tables(), 6, rows, seqs, params, None, VOCAB, fused=True)
    plain, _ = draw(tables(), 6, rows, seqs, params, None, VOCAB, fused=False)
    assert fused.tolist() == plain.tolist()
    assert VOCAB.unk_id not in fused.tolist()


@pytest.mark.parametrize("fused", [False, True] if fused_sampling is not None else [False])
def test_rows_that_ask_get_the_log_probabilities_of_what_they_drew(fused):
    logits = tables()[0]
    seqs = sequences(3, logprobs=[3, None, 0])
    params = BatchParams.of([SamplingParams()] * 3, VOCAB.size)
    tokens, records = draw(tables(), 3, [0, 1, 2], seqs, params, None, VOCAB, fused=fused)
    expected = torch.log_softmax(logits[:3].index_fill(1, torch.tensor([VOCAB.unk_id]), -math.inf), dim=-1)
    first, second, third = records
    assert second is None and third.top == []
    for record, row in ((first, 0), (third, 2)):
        assert record.text == VOCAB.display(int(tokens[row]))
        assert record.logprob == pytest.approx(expected[row, tokens[row]].item())
    assert [text for text, _ in first.top] == [VOCAB.display(i) for i in expected[0].topk(3).indices.tolist()]
