"""The vocabulary: tokenizers' pitfalls avoided, lookup table equal to the tokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from charnet.tokenizer import UNK, UNK_ID, Vocab
from tests.conftest import UNICODE_TEXT


def test_char_vocab_round_trips_all_of_unicode():
    vocab = Vocab.from_chars(UNICODE_TEXT)
    ids = vocab.encode(UNICODE_TEXT)
    assert len(ids) == len(UNICODE_TEXT)  # one id per code point: runs of \r\n stay apart
    assert vocab.decode(ids) == UNICODE_TEXT
    assert vocab.unk_id == UNK_ID and UNK_ID not in ids


def test_tokenizer_json_works_for_any_tokenizers_user():
    text = "a\n\n\nb  c\r\n" + UNICODE_TEXT
    vocab = Vocab.from_chars(text)
    plain = Tokenizer.from_str(vocab.to_json())
    enc = plain.encode(text)
    assert enc.ids == vocab.encode(text).tolist()
    assert enc.tokens[:6] == ["a", "\n", "\n", "\n", "b", " "]  # newline runs not merged
    assert plain.decode(enc.ids) == text  # Fuse decoder: no spaces between tokens


def test_unknown_characters_map_to_an_explicit_id_that_decode_keeps():
    vocab = Vocab.from_chars("abc")
    ids = vocab.encode("abZ€c")
    assert ids.tolist() == [1, 2, UNK_ID, UNK_ID, 3]
    assert vocab.count_unknown(ids) == 2
    assert vocab.unknown_chars("abZ€cZ") == ["Z", "€"]
    assert vocab.decode(ids) == f"ab{UNK}{UNK}c"
    assert Tokenizer.from_str(vocab.to_json()).decode(ids.tolist()) == f"ab{UNK}{UNK}c"  # not dropped


def test_byte_vocab_covers_any_input():
    vocab = Vocab.bytes()
    assert vocab.size == 256 and vocab.unk_id is None
    ids = vocab.encode(UNICODE_TEXT)
    assert ids.tolist() == list(UNICODE_TEXT.encode("utf-8"))
    assert vocab.decode(ids) == UNICODE_TEXT
    plain = Tokenizer.from_str(vocab.to_json())
    assert plain.encode(UNICODE_TEXT).ids == ids.tolist()
    assert plain.decode(ids.tolist()) == UNICODE_TEXT


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_lookup_table_equals_tokenizer_on_random_text(kind):
    rng = random.Random(0)
    alphabet = [chr(c) for c in [*range(0x20, 0x7F), 0x0A, 0x0D, 0x09, 0xE9, 0x301, 0x4E2D, 0x6F22, 0x1F600, 0x1F3FD, 0x200D]]
    text = "".join(rng.choice(alphabet) for _ in range(5000))
    vocab = Vocab.from_chars(alphabet[:60]) if kind == "char" else Vocab.bytes()
    vocab.check(text)  # raises if the fast path and the tokenizer disagree
    assert vocab.encode(text).tolist() == vocab.tokenizer.encode(text).ids


def test_ids_are_deterministic_and_fingerprinted():
    a, b = Vocab.from_chars("hello world"), Vocab.from_chars("world hello")
    assert a.fingerprint == b.fingerprint
    assert Vocab.from_chars("hello").fingerprint != a.fingerprint
    assert Vocab.from_json(a.to_json()).fingerprint == a.fingerprint
    assert a.dtype == np.uint16


def test_foreign_tokenizer_is_rejected():
    from tokenizers import models
    from charnet.errors import CharnetError

    wordy = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    with pytest.raises(CharnetError):
        Vocab(wordy)
