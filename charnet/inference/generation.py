"""One generating sequence: its prompt, its priming, and the text it has emitted.

A `Sequence` lives in a `charnet.inference.batch.Batch`. It first primes: its prompt's tokens are
fed through the model (as a row of the batch, or from a cached prefix) until the state
covers the whole prompt. Then it samples: each step turns one sampled token into text,
holding back what might be the start of a stop string (`charnet.inference.stops`), until a stop
string, its length, a cancellation or an error ends it.

The samples of one request share their prompt: the first sequence (the leader) primes
it once, and the others fork from its state when it is done. A request whose prompt
another request's sequence is priming follows that one the same way (`Sequence.join`).
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from charnet.inference.constraints import Matcher, Utf8
from charnet.inference.request import GenerationRequest
from charnet.inference.sampling import REPETITION_WINDOW, derive_seed
from charnet.inference.stops import StopMatcher
from charnet.tokenizer import Vocab

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"
FINISH_ERROR = "error"
"""A sequence whose own processing raised: it leaves the batch (its exception is in
`Sequence.error`) and the other sequences carry on."""

Snapshot = tuple[tuple[Tensor, ...], Tensor]
"""A sequence's state (`StepKernel.zero_state(1)`'s tuple) and its next-token logits
(V,), held while it has no row in a batch."""


@dataclass(kw_only=True)
class CharLogprob:
    """What the model believed about one generated token (natural logs, before every
    sampling control and constraint)."""

    text: str
    logprob: float
    top: list[tuple[str, float]]
    """The most likely tokens at that position, most likely first."""


@dataclass(kw_only=True)
class Piece:
    """Text a sequence produced in one step (possibly empty), and whether it ended."""

    seq: Sequence
    text: str
    logprobs: list[CharLogprob]
    finish_reason: str | None = None


class Sequence:
    """One generating sequence: its settings, its row in the batch and its output."""

    _ids = itertools.count()

    def __init__(self, request: GenerationRequest, vocab: Vocab, encoded: np.ndarray | None = None,
                 matcher: Matcher | None = None, *, start: np.ndarray) -> None:
        """`start`: the tokens an empty prompt primes (the model's document start)."""
        if request.params.seed is None:
            request = dataclasses.replace(request, params=request.params.with_seed())
        self.id = next(self._ids)
        self.request = request
        self.seed: int = request.params.seed
        self.row = -1
        self.generated = 0  # tokens sampled so far (the step counter of its draws)
        self.finish_reason: str | None = None
        self.tokens: list[int] = []
        self.text_parts: list[str] = []  # emitted text
        encoded = vocab.encode(request.prompt) if encoded is None else encoded
        self.encoded = encoded
        self.prompt_tokens = len(encoded)
        self.unknown_prompt_chars = vocab.count_unknown(encoded)
        self.prompt_ids = encoded if len(encoded) else start
        self.primed = 0
        """Prompt tokens the sequence's state covers; it samples once all are."""
        self.marks: dict[int, bytes] = {}
        """Prompt lengths at which priming caches its state, with their digests."""
        self.snapshot: Snapshot | None = None
        self.leader: Sequence | None = None
        """The sequence whose primed state it starts from: its request's first sample's,
        or another request's priming the same prompt (`joined`)."""
        self.followers: list[Sequence] = []
        self.joined = False
        """Whether its leader is another request's sequence (`join`)."""
        self.logprobs: list[CharLogprob] = []  # emitted so far
        self.recent: list[int] = self.prompt_ids[-REPETITION_WINDOW:].tolist()
        self._stops = StopMatcher(request.stop)
        self._held_logprobs: list[CharLogprob] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if vocab.kind == "byte" else None
        self.error: Exception | None = None
        if matcher is None and request.constraint is not None:
            matcher = Matcher(request.constraint, vocab)
        self.matcher = matcher
        """Where the sequence stands in its constraint (None: unconstrained)."""
        self.utf8: Utf8 | None = Utf8() if vocab.kind == "byte" else None
        """Where a byte sequence stands in UTF-8 (None for characters)."""

    def sibling(self, index: int, vocab: Vocab) -> Sequence:
        """Sample `index` of this sequence's request: the same prompt (primed by this
        one), seed derived as in `charnet.inference.sampling.derive_seed`."""
        params = dataclasses.replace(self.request.params, seed=derive_seed(self.seed, index))
        other = Sequence(dataclasses.replace(self.request, params=params), vocab, self.encoded,
                         self.matcher.copy() if self.matcher is not None else None, start=self.prompt_ids)
        other.leader = self
        self.followers.append(other)
        return other

    def join(self, primer: Sequence) -> None:
        """Start from the state of `primer`, another request's sequence priming the same
        prompt, once it is primed, instead of priming the prompt itself."""
        self.leader, self.joined = primer, True
        primer.followers.append(self)

    def part(self) -> None:
        """Prime its prompt itself after all (its primer stopped before it was primed)."""
        self.leader, self.joined = None, False

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def priming(self) -> bool:
        return self.primed < len(self.prompt_ids)

    @property
    def ready(self) -> bool:
        """Can take a row now: unfinished, without one, and (unless it primes its own
        prompt) forked from its leader."""
        return not self.finished and self.row < 0 and (self.leader is None or self.snapshot is not None)

    def _accept(self, token: int, piece: str, logprob: CharLogprob | None) -> Piece:
        """Take one sampled token; return what can be shown of it."""
        self.generated += 1
        self.tokens.append(token)
        if self.matcher is not None:
            self.matcher.consume(token)
        if self.utf8 is not None:
            self.utf8.feed(token)
        if self._decoder is not None:
            piece = self._decoder.decode(piece, final=False)
        if logprob is not None:
            self._held_logprobs.append(logprob)
        text, stopped = self._stops.feed(piece)
        if stopped:
            self.finish_reason = FINISH_STOP
        elif self.matcher is not None and self.matcher.done:
            return self._close(text, FINISH_STOP)
        elif self.generated >= self.request.max_chars:
            return self._close(text, FINISH_LENGTH)
        return self._emit(text)

    def end_unmatched(self) -> Piece:
        """The model chose a character the constraint cannot take, where the constraint
        may end: the sequence ends before that character (finish reason ``stop``)."""
        return self._close("", FINISH_STOP)

    def _close(self, text: str, reason: str) -> Piece:
        """End with `reason`, showing what was held back (a stop string's possible start)."""
        self.finish_reason = reason
        if self._decoder is not None:
            text += self._stops.feed(self._decoder.decode(b"", final=True))[0]
        return self._emit(text + self._stops.flush())

    def _emit(self, text: str) -> Piece:
        # Log-probabilities go out with the text they belong to. A character token is
        # one character of text, so as many leave as characters do (those of a cut-off
        # stop string never leave); byte tokens leave whenever any text does.
        if self._decoder is None:
            count = len(text)
        else:
            count = len(self._held_logprobs) if text or self.finished else 0
        out = self._held_logprobs[:count]
        self._held_logprobs = [] if self.finished else self._held_logprobs[count:]
        self.logprobs.extend(out)
        if text:
            self.text_parts.append(text)
        return Piece(seq=self, text=text, logprobs=out, finish_reason=self.finish_reason)
