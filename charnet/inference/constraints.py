"""Structured output: generation held to a regular expression, a JSON Schema, a grammar
or a list of choices, by masking the characters the constraint cannot continue with.

The grammar engine is llguidance (the one vLLM, llama.cpp and SGLang use): it compiles
all four kinds to one grammar, computes a token mask in microseconds for any vocabulary,
bounds the work of each step (its parser limits), and takes the model's vocabulary as
byte strings, so a character vocabulary (each token one character's UTF-8) and a byte
vocabulary (each token one byte) both work. xgrammar would do as well for JSON; it
needs a Hugging Face tokenizer object and pulls a larger dependency.

A character model has no end-of-text token, so a constraint that may end or go on
(``[a-z]+`` after one letter) lets the model say when: the sequence samples from all
characters, and one the constraint cannot take ends it (finish reason ``stop``, the
character not kept). Once the constraint allows nothing more, the sequence ends at once.

Byte-vocabulary models are also kept to valid UTF-8 (`Utf8`), constrained or not, and
never start a character their length budget cannot finish.
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import torch
from llguidance import LLExecutor, LLMatcher, LLTokenizer, TokenizerWrapper
from llguidance.gbnf_to_lark import gbnf_to_lark

from charnet.errors import ConfigError
from charnet.tokenizer import Vocab

Kind = Literal["regex", "json", "grammar", "choice"]
KINDS: tuple[str, ...] = ("regex", "json", "grammar", "choice")

MAX_SPEC_CHARS = 65_536
"""Longest pattern, schema or grammar (and longest list of choices, all together)."""

JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
"""JSON comes out as `json.dumps` writes it by default: one space after , and :, no
other whitespace (a model free to add whitespace could fill its budget with it)."""


@dataclass(frozen=True, kw_only=True)
class Constraint:
    """What generated text must match. Validated (and compiled) where it is built."""

    kind: Kind
    """``regex`` (Rust regex syntax, the whole text must match), ``json`` (a JSON
    Schema), ``grammar`` (Lark, or GBNF as llama.cpp writes it), or ``choice``."""

    spec: str | tuple[str, ...]
    """The pattern, the schema as JSON text, the grammar, or the choices."""

    grammar: str = field(init=False, repr=False, compare=False)
    """The spec compiled to llguidance's grammar format."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError("constraint", f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        field_name = self.kind
        if self.kind == "choice":
            choices = (self.spec,) if isinstance(self.spec, str) else tuple(self.spec)
            if not choices or not all(isinstance(c, str) and c for c in choices):
                raise ConfigError(field_name, "must be a non-empty list of non-empty strings")
            object.__setattr__(self, "spec", choices)
            size = sum(map(len, choices))
        else:
            if not isinstance(self.spec, str):
                raise ConfigError(field_name, f"must be a string, got {type(self.spec).__name__}")
            size = len(self.spec)
        if size > MAX_SPEC_CHARS:
            raise ConfigError(field_name, f"is {size:,} characters, above the limit of {MAX_SPEC_CHARS:,}")
        object.__setattr__(self, "grammar", _compile(self.kind, self.spec))

    @classmethod
    def of(cls, value: Constraint | Mapping[str, Any]) -> Constraint:
        """A constraint from itself or from vLLM's ``structured_outputs`` form: a mapping
        with one of ``regex``, ``json`` (a schema, as a dict or JSON text), ``grammar``,
        ``choice`` (a list), or ``json_object: true`` (any JSON object)."""
        if isinstance(value, Constraint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError("constraint", f"must be a Constraint or a mapping, got {type(value).__name__}")
        given = {k: v for k, v in value.items() if v is not None and v is not False}
        if given.get("json_object") is True:
            given.pop("json_object")
            given["json"] = {"type": "object"}
        if len(given) != 1 or next(iter(given)) not in KINDS:
            raise ConfigError("constraint", f"give exactly one of {', '.join(KINDS)} or json_object, "
                                            f"got {sorted(given) or 'none'}")
        (kind, spec), = given.items()
        if kind == "json" and not isinstance(spec, str):
            spec = json.dumps(spec)
        return cls(kind=kind, spec=spec)


def _compile(kind: str, spec: str | tuple[str, ...]) -> str:
    try:
        if kind == "regex":
            grammar = LLMatcher.grammar_from_regex(spec)
        elif kind == "json":
            try:
                schema = json.loads(spec)
            except json.JSONDecodeError as e:
                raise ConfigError("json", f"is not valid JSON: {e}") from None
            if not isinstance(schema, (dict, bool)):
                raise ConfigError("json", "must be a JSON Schema (an object)")
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)
        elif kind == "grammar":
            grammar = LLMatcher.grammar_from_lark(gbnf_to_lark(spec) if "::=" in spec else spec)
        else:  # the choices as one alternation of string literals (JSON's escapes are Lark's)
            grammar = LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in spec))
    except (ValueError, TypeError) as e:
        raise ConfigError(kind, str(e).strip().splitlines()[0]) from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise ConfigError(kind, _first_line(error))
    return grammar


def _first_line(error: str) -> str:
    # llguidance writes "at L(C): what (in kind): detail", then the detail's own lines,
    # one of them "error: cause", then the grammar quoted: the first line and the cause.
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    cause = next((line for line in lines[1:] if line.startswith("error:")), "")
    return f"{lines[0]} {cause}".strip() if lines else "is not valid"


# -- the vocabulary, as llguidance sees it --------------------------------------------------

class _Tokens:
    """A vocabulary in the shape `llguidance.TokenizerWrapper` reads: each token's bytes,
    plus one end-of-text token after the last id (a character model has none; it stands
    for "the constraint may end here")."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        pieces = [vocab.piece(i) for i in range(vocab.size)]
        self.tokens = [p if isinstance(p, bytes) else p.encode("utf-8") for p in pieces] + [b"<|end|>"]
        self.eos_token_id = vocab.size
        self.bos_token_id = None
        self.special_token_ids = [vocab.size]

    def __call__(self, text: str | bytes) -> list[int]:
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        return [int(i) for i in self.vocab.encode(text)]


@functools.lru_cache(maxsize=16)
def _tokenizer(vocab: Vocab) -> LLTokenizer:
    return LLTokenizer(TokenizerWrapper(_Tokens(vocab)))


@functools.lru_cache(maxsize=64)
def _compiled(grammar: str, vocab: Vocab) -> LLMatcher:
    """A matcher at the start of `grammar`, compiled once per grammar and vocabulary:
    checking a request, and each of its samples, start from copies of it."""
    return LLMatcher(_tokenizer(vocab), grammar, log_level=0)


@functools.cache
def _executor() -> LLExecutor:
    # Computes the masks of a batch's rows in parallel, with every core (llguidance's
    # default leaves a fifth idle). Made on first use: a process that forks before
    # generating anything (server workers) must not inherit its threads.
    return LLExecutor(num_threads=min(32, os.cpu_count() or 1))


class Matcher:
    """One sequence's progress through its constraint."""

    def __init__(self, constraint: Constraint, vocab: Vocab, matcher: LLMatcher | None = None) -> None:
        self.constraint, self.vocab = constraint, vocab
        self._m = matcher if matcher is not None else _compiled(constraint.grammar, vocab).deep_copy()
        self.ahead: tuple[Future, int] | None = None
        """Its next mask, being computed by `prefetch` (a job and this matcher's row in it)."""
        if self._m.is_error():
            raise ConfigError(constraint.kind, _first_line(self._m.get_error()))

    def settle(self) -> None:
        """Wait until no `prefetch` job is computing this matcher's mask: llguidance
        refuses ("Already borrowed") a matcher used by two threads at once."""
        if self.ahead is not None:
            wait([self.ahead[0]])

    def copy(self) -> Matcher:
        """A matcher at the same point (another sample of the same request)."""
        self.settle()
        return Matcher(self.constraint, self.vocab, self._m.deep_copy())

    def consume(self, token: int) -> None:
        self.settle()
        self.ahead = None
        if not self._m.consume_token(token):
            raise ConfigError(self.constraint.kind, _first_line(self._m.get_error()))

    @property
    def done(self) -> bool:
        """The constraint is complete and allows nothing more."""
        self.settle()
        return self._m.is_stopped()


_AHEAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charnet-masks")


def prefetch(matchers: list[Matcher], vocab_size: int) -> None:
    """Start computing the next masks of `matchers` in the background: a batch calls this
    once its rows have taken their tokens, so the masks are made while the model steps
    (llguidance and torch both let go of the GIL). `masks` uses them if no matcher has
    moved since."""
    if matchers:
        job = _AHEAD.submit(_compute, list(matchers), vocab_size)
        for i, m in enumerate(matchers):
            m.ahead = (job, i)


def masks(matchers: list[Matcher], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """What each matcher allows next: (characters (k, V) bool, may end here (k,) bool)."""
    jobs = {id(m.ahead[0]) for m in matchers if m.ahead is not None}
    if len(jobs) == 1 and all(m.ahead is not None for m in matchers):
        job = matchers[0].ahead[0]
        chars, ends = job.result()
        rows = [m.ahead[1] for m in matchers]
        return chars[rows], ends[rows]
    for m in matchers:  # a row that joined since: compute them all here, once no job holds one
        m.settle()
    return _compute(matchers, vocab_size)


def _compute(matchers: list[Matcher], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    words = (vocab_size + 1 + 31) // 32
    bits = np.zeros((len(matchers), words), dtype=np.int32)
    _executor().unsafe_compute_mask_ptr([(m._m, i) for i, m in enumerate(matchers)], bits.ctypes.data, words * 4,
                                      len(matchers))
    allowed = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little").astype(bool)
    return allowed[:, :vocab_size], allowed[:, vocab_size]


@dataclass
class Masks:
    """What the constrained rows of one step may sample."""

    allowed: torch.Tensor | None
    """(rows, V) bool; None when no row is constrained and the vocabulary is characters."""

    may_end: dict[int, np.ndarray]
    """Rows whose constraint may end here: they sample freely, and a character outside
    this (V,) mask ends them."""

    dead: set[int]
    """Rows whose constraint no character of the vocabulary can continue."""

    @classmethod
    def of(cls, seqs: list, vocab: Vocab, device: torch.device) -> Masks:
        """The masks of `seqs` (`charnet.inference.generation.Sequence`s, one per row)."""
        constrained = [i for i, s in enumerate(seqs) if s.matcher is not None]
        if not constrained and vocab.kind != "byte":
            return cls(allowed=None, may_end={}, dead=set())
        allowed = torch.ones(len(seqs), vocab.size, dtype=torch.bool)
        may_end, dead = {}, set()
        if constrained:
            chars, ends = masks([seqs[i].matcher for i in constrained], vocab.size)
            if vocab.unk_id is not None:
                chars[:, vocab.unk_id] = False
            stuck = ~ends & ~chars.any(1)
            may_end = {constrained[j]: chars[j].copy() for j in np.flatnonzero(ends)}
            dead = {constrained[j] for j in np.flatnonzero(stuck)}
            chars[ends | stuck] = True  # they sample freely (and are judged after the draw)
            allowed[constrained] = torch.from_numpy(chars)
        if vocab.kind == "byte":
            rows = [s.utf8.row(s.request.max_chars - s.generated) for s in seqs]
            allowed &= UTF8_MASKS[rows]
        return cls(allowed=allowed.to(device), may_end=may_end, dead=dead)


# -- UTF-8 for byte vocabularies ------------------------------------------------------------

def _ranges(*spans: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(256, dtype=torch.bool)
    for lo, hi in spans:
        mask[lo:hi + 1] = True
    return mask


# Rows 0-3: a character may start, with room left for 1, 2, 3 or 4+ bytes. Rows 4-8: the
# continuation byte after the lead byte E0, ED, F0 and F4 (which exclude overlong forms,
# surrogates and code points past U+10FFFF), and any other continuation byte.
_LEADS = [(0x00, 0x7F), (0xC2, 0xDF), (0xE0, 0xEF), (0xF0, 0xF4)]
UTF8_MASKS = torch.stack([_ranges(*_LEADS[:n]) for n in (1, 2, 3, 4)] + [
    _ranges((0xA0, 0xBF)), _ranges((0x80, 0x9F)), _ranges((0x90, 0xBF)), _ranges((0x80, 0x8F)), _ranges((0x80, 0xBF))])
_FIRST_CONTINUATION = {0xE0: 4, 0xED: 5, 0xF0: 6, 0xF4: 7}


class Utf8:
    """Where a byte sequence stands in UTF-8: the row of `UTF8_MASKS` that says which
    bytes may come next."""

    def __init__(self) -> None:
        self.pending = 0  # continuation bytes still due
        self.next_row = 8

    def row(self, room: int) -> int:
        """The mask row for the next byte, with `room` bytes left in the budget."""
        return self.next_row if self.pending else min(room, 4) - 1

    def feed(self, byte: int) -> None:
        if self.pending:
            self.pending -= 1
            self.next_row = 8
        elif byte >= 0xC0:
            self.pending = 1 if byte < 0xE0 else 2 if byte < 0xF0 else 3
            self.next_row = _FIRST_CONTINUATION.get(byte, 8)
