"""The vocabulary: a Hugging Face `tokenizers.Tokenizer` over characters or bytes.

The tokenizer is the vocabulary's source of truth and its file format (every checkpoint
carries a ``tokenizer.json`` any tokenizers user can load). Bulk encoding goes through
a numpy lookup table built from the same vocabulary instead: tokenizers encodes about
1-3 MB/s, the table 100+ MB/s, and `Vocab.check` proves on a sample that both agree.

Pitfalls of tokenizers this module avoids:
- the split regex is ``[\\s\\S]`` (one code point): ``.`` skips newlines, so runs of them
  would fall through as one unknown piece, and ``\\X`` merges grapheme clusters;
- the decoder is `Fuse`, otherwise `decode` joins tokens with spaces;
- the unknown token is U+FFFD REPLACEMENT CHARACTER and is *not* a special token, so
  `decode` shows it rather than silently dropping it as it drops special tokens.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from charnet.errors import CharnetError

UNK = "\ufffd"
UNK_ID = 0
MAX_CODEPOINT = 0x10FFFF


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, as tokenizers' ByteLevel uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _char_split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")


def _char_tokenizer(ids: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(ids, unk_token=UNK))
    tok.pre_tokenizer = _char_split()
    tok.decoder = decoders.Fuse()
    return tok


def build_char_tokenizer(chars: Iterable[str]) -> Tokenizer:
    """A tokenizer with id 0 for unknown characters and one id per character, in
    code-point order (so the same character set always gives the same ids)."""
    ordered = sorted(set(chars) - {UNK})
    return _char_tokenizer({UNK: UNK_ID, **{c: i + 1 for i, c in enumerate(ordered)}})


def build_byte_tokenizer() -> Tokenizer:
    """A tokenizer over the 256 byte values of UTF-8 text; id == byte value."""
    b2u = _bytes_to_unicode()
    tok = Tokenizer(models.WordLevel({b2u[b]: b for b in range(256)}, unk_token=b2u[0]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), _char_split()]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


class Vocab:
    """A character or byte vocabulary with fast numpy encoding and decoding."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        self.size = len(vocab)
        self.kind = "byte" if isinstance(tokenizer.decoder, decoders.ByteLevel) else "char"
        self._id_to_token = [""] * self.size
        for token, i in vocab.items():
            if not 0 <= i < self.size:
                raise CharnetError(f"tokenizer ids must be 0..{self.size - 1}; found {i}")
            self._id_to_token[i] = token
        if self.kind == "char":
            if self._id_to_token[UNK_ID] != UNK or any(len(t) != 1 for t in self._id_to_token):
                raise CharnetError("tokenizer is not a charnet character vocabulary (one character per token, id 0 = U+FFFD)")
        elif self.size != 256:
            raise CharnetError(f"a byte vocabulary has 256 tokens; this one has {self.size}")

    # -- construction and storage ------------------------------------------------------

    @classmethod
    def from_chars(cls, chars: Iterable[str]) -> Vocab:
        return cls(build_char_tokenizer(chars))

    @classmethod
    def bytes(cls) -> Vocab:
        return cls(build_byte_tokenizer())

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the id assignment; equal fingerprints encode text identically."""
        payload = json.dumps([self.kind, self._id_to_token], ensure_ascii=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every id."""
        return np.dtype(np.uint16) if self.size <= 1 << 16 else np.dtype(np.uint32)

    @property
    def unk_id(self) -> int | None:
        """The id unknown characters map to (None for bytes, which cover everything)."""
        return UNK_ID if self.kind == "char" else None

    def missing(self, chars: Iterable[str]) -> list[str]:
        """The characters of `chars` this vocabulary has no id for, in code-point order
        (none for bytes, which cover every text)."""
        if self.kind == "byte":
            return []
        return sorted(set(chars) - set(self._id_to_token))

    def extended(self, chars: Iterable[str]) -> Vocab:
        """This vocabulary with the `missing` characters of `chars` appended as new ids:
        every existing id keeps its character, so a model's rows keep their meaning."""
        new = self.missing(chars)
        if not new:
            return self
        ids = {token: i for i, token in enumerate(self._id_to_token)}
        return Vocab(_char_tokenizer({**ids, **{c: self.size + i for i, c in enumerate(new)}}))

    # -- fast paths -----------------------------------------------------------------------

    @cached_property
    def _table(self) -> np.ndarray:
        # Code point -> id; zero-filled, so every character not in the vocabulary
        # lands on UNK_ID without a branch.
        table = np.zeros(MAX_CODEPOINT + 1, dtype=self.dtype)
        for i, token in enumerate(self._id_to_token):
            if i != UNK_ID:
                table[ord(token)] = i
        return table

    @cached_property
    def _pieces(self) -> list[str] | list[bytes]:
        if self.kind == "char":
            return list(self._id_to_token)
        return [bytes([i]) for i in range(256)]

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text`, identical to the tokenizer's, as a numpy array."""
        if self.kind == "byte":
            return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8).astype(self.dtype)
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return self._table[codepoints]

    def count_unknown(self, ids: np.ndarray) -> int:
        return 0 if self.unk_id is None else int(np.count_nonzero(ids == self.unk_id))

    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of `text` outside the vocabulary, in order of appearance."""
        if self.kind == "byte":
            return []
        table = self._table
        return list(dict.fromkeys(c for c in text if table[ord(c)] == UNK_ID and c != UNK))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`; unknown ids become U+FFFD, broken UTF-8 in byte mode too."""
        if self.kind == "char":
            tokens = self._id_to_token
            return "".join(tokens[int(i)] for i in ids)
        return b"".join(self._pieces[int(i)] for i in ids).decode("utf-8", "replace")

    def token_id(self, char: str) -> int | None:
        """The id of the token that is exactly `char` (for bytes, an ASCII character),
        or None if the vocabulary has none."""
        if self.kind == "byte":
            return ord(char) if len(char) == 1 and ord(char) < 128 else None
        if len(char) != 1 or char == UNK:
            return None
        token = int(self._table[ord(char)])
        return None if token == UNK_ID else token

    def piece(self, token_id: int) -> str | bytes:
        """One token's text (char vocabulary) or byte string (byte vocabulary)."""
        return self._pieces[token_id]

    def display(self, token_id: int) -> str:
        """A token as text for people and JSON: the character, or for a byte that is
        not ASCII on its own, ``bytes:\\xNN`` (as OpenAI's API shows partial bytes)."""
        if self.kind == "char":
            return self._id_to_token[token_id]
        return chr(token_id) if token_id < 128 else f"bytes:\\x{token_id:02x}"

    def listing(self) -> list[str]:
        """Every token as `display` shows it, by id: what ``logit_bias`` ids refer to."""
        return [self.display(i) for i in range(self.size)]

    def check(self, text: str) -> None:
        """Assert that the lookup table encodes `text` exactly as the tokenizer does."""
        fast = self.encode(text).tolist()
        slow = self.tokenizer.encode(text).ids
        if fast != slow:
            raise AssertionError("charnet's lookup-table encoder disagrees with the tokenizer")


def vocab_for(kind: str, chars: Iterable[str] = ()) -> Vocab:
    """The vocabulary of `kind` (``char`` over `chars`, or ``byte``)."""
    if kind == "byte":
        return Vocab.bytes()
    return Vocab.from_chars(chars)
