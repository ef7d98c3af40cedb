"""What one sequence is asked to generate, validated once where it is built.

Every front end (the Python API, `charnet sample`, the HTTP routes) converts its own
spelling into a `GenerationRequest`; a bad value is a `ConfigError` naming the field
before any work is done, so nothing unchecked reaches the batched step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from charnet.errors import ConfigError
from charnet.inference.constraints import Constraint, Matcher, masks
from charnet.inference.sampling import SamplingParams
from charnet.inference.stops import MAX_STOP_CHARS, MAX_STOPS
from charnet.tokenizer import Vocab

MAX_CHARS = 100_000
"""Most characters one sequence may generate (a request asking for more is refused)."""

MAX_LOGPROBS = 20
"""Most alternatives per character that `logprobs` may ask for (as vLLM allows)."""


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (JSON's "\\ud800" decodes to one, and
    so does a command-line argument that is not valid UTF-8), or None if it is valid
    Unicode. Such text cannot be written out as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def check_text(name: str, text: str) -> None:
    """`ConfigError` unless `text` is valid Unicode."""
    at = lone_surrogate(text)
    if at is not None:
        raise ConfigError(name, f"is not valid Unicode: a lone surrogate U+{ord(text[at]):04X} at index {at}")


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One sequence to generate."""

    prompt: str = ""
    """Text the sequence continues; empty starts a new document (the model is primed
    with its checkpoint's `document_start`, which is not returned)."""

    max_chars: int = 256
    """Tokens to generate at most (characters, or bytes for a byte vocabulary)."""

    params: SamplingParams = field(default_factory=SamplingParams)
    """How each character is chosen: the sampling controls and the seed."""

    stop: tuple[str, ...] = ()
    """Generation ends before the first of these strings appears; it is not returned. At
    most `MAX_STOPS` strings of at most `MAX_STOP_CHARS` characters."""

    logprobs: int | None = None
    """None: no log-probabilities; n >= 0: each character's log-probability under the
    model and its n most likely alternatives."""

    constraint: Constraint | None = None
    """What the generated text must match (`charnet.inference.constraints`); a mapping
    in vLLM's ``structured_outputs`` form is accepted and converted."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ConfigError("prompt", f"must be a string, got {type(self.prompt).__name__}")
        check_text("prompt", self.prompt)
        if not isinstance(self.max_chars, int) or isinstance(self.max_chars, bool) or not 0 <= self.max_chars <= MAX_CHARS:
            raise ConfigError("max_chars", f"must be an integer in [0, {MAX_CHARS}], got {self.max_chars!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError("stop", "stop sequences must be non-empty strings")
        if len(self.stop) > MAX_STOPS:
            raise ConfigError("stop", f"at most {MAX_STOPS} stop sequences, got {len(self.stop)}")
        for s in self.stop:
            if len(s) > MAX_STOP_CHARS:
                raise ConfigError("stop", f"a stop sequence may have at most {MAX_STOP_CHARS} characters, "
                                          f"got {len(s)}")
            check_text("stop", s)
        if self.constraint is not None:
            object.__setattr__(self, "constraint", Constraint.of(self.constraint))
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ConfigError("logprobs", f"must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")

    @classmethod
    def of(cls, prompt: str = "", **settings: Any) -> GenerationRequest:
        """The request for flat settings, as the Python API and `charnet sample` spell
        them: `SamplingParams` fields go to ``params``, the rest are this type's own.
        An unknown name is a `ConfigError`."""
        sampling = {f.name for f in fields(SamplingParams)}
        own = {f.name for f in fields(cls)} - {"params", "prompt"}
        unknown = sorted(set(settings) - sampling - own)
        if unknown:
            raise ConfigError(unknown[0], "is not a generation setting")
        params = SamplingParams(**{k: v for k, v in settings.items() if k in sampling})
        return cls(prompt=prompt, params=params, **{k: v for k, v in settings.items() if k in own})

    def _check_start(self, vocab: Vocab) -> None:
        chars, may_end = masks([Matcher(self.constraint, vocab)], vocab.size)
        if vocab.unk_id is not None:
            chars[:, vocab.unk_id] = False
        if not chars.any() and not may_end.any():
            raise ConfigError(self.constraint.kind, "no character of the model's vocabulary can begin it")

    def for_vocab(self, vocab: Vocab) -> GenerationRequest:
        """This request checked against a model's vocabulary, with `logit_bias` keyed by
        token ids only (characters looked up); `ConfigError` for a setting the
        vocabulary cannot honour."""
        if self.params.top_k > vocab.size:
            raise ConfigError("top_k", f"must be at most the model's vocabulary size ({vocab.size}), "
                                       f"got {self.params.top_k}")
        bias: dict[int, float] = {}
        for key, value in self.params.logit_bias:
            token = vocab.token_id(key) if isinstance(key, str) else key
            if token is None:
                raise ConfigError("logit_bias", f"{key!r} is not a token of the model's vocabulary (a byte-vocabulary "
                                                "model takes ids, or ASCII characters)")
            if token >= vocab.size:
                raise ConfigError("logit_bias", f"token id {token} is not below the model's vocabulary size "
                                                f"({vocab.size})")
            bias[token] = value
        if self.constraint is not None:
            self._check_start(vocab)
        if not any(isinstance(k, str) for k, _ in self.params.logit_bias):
            return self
        return dataclasses.replace(self, params=dataclasses.replace(self.params, logit_bias=bias))
