"""Encoded corpora: cached on disk by content, chunked, memory-mapped; stream batching."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import torch
import pytest

from charnet import corpus as corpus_mod
from charnet.training import data as data_mod
from charnet.training.data import IGNORE, EvalStreams, Streams, load_corpus
from charnet.training.distributed import Dist
from charnet.errors import CorpusError
from charnet.tokenizer import Vocab
from tests.conftest import UNICODE_TEXT


def test_encodes_like_the_tokenizer(unicode_corpus):
    corpus = load_corpus([unicode_corpus])
    text = UNICODE_TEXT * 40
    assert isinstance(corpus.ids, np.memmap)
    assert corpus.ids.tolist() == corpus.vocab.tokenizer.encode(text).ids
    assert corpus.vocab.decode(corpus.ids) == text
    assert corpus.stats.chars == len(text)


def test_second_load_comes_from_the_cache(small_corpus, monkeypatch):
    first = load_corpus([small_corpus])

    def boom(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(data_mod, "_scan", boom)
    monkeypatch.setattr(data_mod, "_encode_to", boom)
    second = load_corpus([small_corpus])
    assert np.array_equal(first.ids, second.ids)
    assert first.vocab.fingerprint == second.vocab.fingerprint


def test_cache_key_follows_content_not_path(small_corpus, tmp_path):
    a = load_corpus([small_corpus])
    copy = tmp_path / "copy.txt"
    copy.write_bytes(small_corpus.read_bytes())
    assert load_corpus([copy]).sha256 == a.sha256
    copy.write_bytes(small_corpus.read_bytes() + b"!")
    assert load_corpus([copy]).sha256 != a.sha256


def test_chunked_encoding_equals_whole(unicode_corpus, monkeypatch, tmp_path):
    whole = load_corpus([unicode_corpus], cache=tmp_path / "a")
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 13)
    chunked = load_corpus([unicode_corpus], cache=tmp_path / "b")
    assert np.array_equal(whole.ids, chunked.ids)


def test_byte_tokenizer_and_given_vocab(unicode_corpus):
    byte = load_corpus([unicode_corpus], tokenizer="byte")
    assert byte.ids.tolist() == list((UNICODE_TEXT * 40).encode())
    narrow = load_corpus([unicode_corpus], vocab=Vocab.from_chars("abc"))
    assert narrow.unknown == len(UNICODE_TEXT * 40) - sum((UNICODE_TEXT * 40).count(c) for c in "abc")


def test_empty_corpus(tmp_path):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(CorpusError, match="corpus is empty"):
        load_corpus([tmp_path / "e.txt"])


def test_split_holds_out_the_end(small_corpus):
    corpus = load_corpus([small_corpus])
    train, val = corpus.split(0.1)
    assert len(val) == int(len(corpus) * 0.1)
    assert np.array_equal(np.concatenate([train, val]), corpus.ids)


def test_streams_are_contiguous_and_carry_on():
    data = np.arange(1000)
    streams = Streams(data, batch_size=4, seq_len=10)
    assert streams.stream_len == 249 and len(streams) == 24
    x0, y0 = streams.batch(0)
    x1, _ = streams.batch(1)
    assert x0[:, 0].tolist() == [0, 249, 498, 747]
    assert np.array_equal(y0.numpy(), x0.numpy() + 1)  # targets are the next characters
    assert np.array_equal(x1.numpy(), x0.numpy() + 10)  # window 1 follows window 0


def test_ranks_together_are_the_single_process_streams():
    data = np.arange(5000)
    single = Streams(data, batch_size=6, seq_len=8)
    ranks = [Streams(data, batch_size=3, seq_len=8, rank=r, world_size=2) for r in range(2)]
    for k in (0, 5):
        joined = np.concatenate([r.batch(k)[0].numpy() for r in ranks])
        assert np.array_equal(joined, single.batch(k)[0].numpy())
    whole = EvalStreams(data, 6, 8)
    shards = [whole.shard(Dist(r, 2)) for r in range(2)]
    assert sorted(np.concatenate([s.starts for s in shards]).tolist()) == whole.starts.tolist()
    assert sum(s.targets for s in shards) == whole.targets == len(data) - 1


@pytest.mark.parametrize("n, batch, seq", [(1000, 4, 10), (111_540, 64, 128), (17, 64, 128), (2, 8, 4), (50, 7, 3)])
def test_evaluation_scores_every_character_once(n, batch, seq):
    """The validation split's every target (each character after the first), exactly
    once, predicted from everything before it in its stream."""
    data = np.arange(n) % 251
    streams = EvalStreams(data, batch, seq)
    seen = []
    for k in range(len(streams)):
        x, y = streams.batch(k)
        assert x.shape == y.shape and x.shape[1] <= seq
        real = y != IGNORE
        seen += [((x[real] + 1) % 251).tolist(), y[real].tolist()]
        assert torch.equal((x[real] + 1) % 251, y[real])  # each target follows its input
    assert streams.targets == n - 1 == sum(len(t) for t in seen[1::2])


def test_corpus_shorter_than_one_batch():
    with pytest.raises(CorpusError, match="fewer than one batch needs"):
        Streams(np.arange(100), batch_size=8, seq_len=16)


def test_memory_stays_flat_for_large_corpora(tmp_path):
    """Peak memory of encoding a 64 MB corpus is within 40 MB of a 16 MB one."""
    script = textwrap.dedent("""
        import resource, sys
        from pathlib import Path
        from charnet.training.data import load_corpus
        path = Path(sys.argv[1])
        line = "The quick brown fox jumps over the lazy dog; ¿qué? 漢字\\n"
        with open(path, "w", encoding="utf-8") as f:
            while f.tell() < int(sys.argv[2]) << 20:
                f.write(line * 10000)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        corpus = load_corpus([path], cache=Path(sys.argv[3]))
        assert corpus.ids[-1] == corpus.vocab.encode("\\n")[0]
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
    """)
    peaks = {}
    for mb in (16, 64):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"c{mb}.txt"), str(mb), str(tmp_path / "cache")],
                             capture_output=True, text=True, check=True)
        peaks[mb] = int(out.stdout.split()[-1])
        (tmp_path / f"c{mb}.txt").unlink()
    assert peaks[64] - peaks[16] < 40, peaks
