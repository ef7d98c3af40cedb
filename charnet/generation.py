"""Continuous batching: many sequences advanced together, one character per step.

A `Batch` holds the recurrent state of every active sequence as rows of one
(layers, rows, hidden) tensor. Each `step` samples one token for every row from its
pending logits, turns it into text (holding back what might be the start of a stop
sequence), retires the rows that finished, and feeds the new tokens through the model
in one batched kernel call. Sequences join between steps (`add`) and leave when they
finish or are cancelled, so a server can keep the batch full while requests come and go.

A sequence's output does not depend on its neighbours: the kernel computes each row
independently (see `charnet.kernel`), and its random draws are a pure function of its
own seed and step count (see `charnet.sampling`). So a request served in a batch of 64
yields exactly what it yields alone.
"""

from __future__ import annotations

import codecs
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from charnet.errors import ConfigError
from charnet.kernel import StepKernel
from charnet.prompt_cache import PromptCache
from charnet.sampling import REPETITION_WINDOW, BatchParams, SamplingParams, choose, uniform
from charnet.tokenizer import Vocab

MAX_CHARS = 100_000
"""Most characters one sequence may generate (a request asking for more is refused)."""

MAX_LOGPROBS = 20
"""Most alternatives per character that `logprobs` may ask for (as vLLM allows)."""

EMPTY_PROMPT = "\n\n"
"""What an empty prompt primes the model with: the blank line `charnet train` puts
between documents, so an empty prompt starts a fresh document. It is not returned."""

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"
FINISH_ERROR = "error"
"""A sequence whose own processing raised: it leaves the batch (its exception is in
`Sequence.error`) and the other sequences carry on."""


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate."""

    prompt: str = ""
    """Text the sequence continues; empty starts a new document (`EMPTY_PROMPT`)."""

    max_chars: int = 256
    """Tokens to generate at most (characters, or bytes for a byte vocabulary)."""

    params: SamplingParams = field(default_factory=SamplingParams)
    """Temperature, top-k, top-p, repetition penalty and seed."""

    stop: tuple[str, ...] = ()
    """Generation ends before the first of these strings appears; it is not returned."""

    logprobs: int | None = None
    """None: no log-probabilities; n >= 0: each character's log-probability under the
    model and its n most likely alternatives."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ConfigError("prompt", f"must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.max_chars, int) or isinstance(self.max_chars, bool) or not 0 <= self.max_chars <= MAX_CHARS:
            raise ConfigError("max_chars", f"must be an integer in [0, {MAX_CHARS}], got {self.max_chars!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError("stop", "stop sequences must be non-empty strings")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ConfigError("logprobs", f"must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")


@dataclass
class CharLogprob:
    """What the model believed about one generated token (natural logs, before
    temperature, top-k and top-p)."""

    text: str
    logprob: float
    top: list[tuple[str, float]]
    """The most likely tokens at that position, most likely first."""


@dataclass
class Piece:
    """Text a sequence produced in one step (possibly empty), and whether it ended."""

    seq: Sequence
    text: str
    logprobs: list[CharLogprob]
    finish_reason: str | None = None


class _StopMatcher:
    """Finds stop strings in text that arrives piece by piece, holding back any tail
    that could still become one, so no part of a stop string is ever emitted."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)
        self.tail = ""  # unemitted text (at most `longest - 1` chars, until a match)

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was found)."""
        if not self.stops:
            return text, False
        buf = self.tail + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.tail = ""
            return buf[: min(hits)], True
        hold = 0
        for s in self.stops:  # longest suffix of buf that is a proper prefix of a stop
            for n in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:n]):
                    hold = n
                    break
        self.tail = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        text, self.tail = self.tail, ""
        return text


class Sequence:
    """One generating sequence: its settings, its row in the batch and its output."""

    _ids = itertools.count()

    def __init__(self, request: GenerationRequest, vocab: Vocab) -> None:
        if request.params.seed is None:
            request = GenerationRequest(request.prompt, request.max_chars, request.params.with_seed(),
                                        request.stop, request.logprobs)
        self.id = next(self._ids)
        self.request = request
        self.seed: int = request.params.seed
        self.row = -1
        self.generated = 0  # tokens sampled so far (the step counter of its draws)
        self.finish_reason: str | None = None
        self.tokens: list[int] = []
        self.text_parts: list[str] = []  # emitted text
        encoded = vocab.encode(request.prompt)
        self.prompt_tokens = len(encoded)
        self.unknown_prompt_chars = vocab.count_unknown(encoded)
        self.prompt_ids = encoded if len(encoded) else vocab.encode(EMPTY_PROMPT)
        self.logprobs: list[CharLogprob] = []  # emitted so far
        self.recent: list[int] = self.prompt_ids[-REPETITION_WINDOW:].tolist()
        self._stops = _StopMatcher(request.stop)
        self._held_logprobs: list[CharLogprob] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if vocab.kind == "byte" else None
        self.error: Exception | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _accept(self, token: int, piece: str, logprob: CharLogprob | None) -> Piece:
        """Take one sampled token; return what can be shown of it."""
        self.generated += 1
        self.tokens.append(token)
        if self._decoder is not None:
            piece = self._decoder.decode(piece, final=False)
        if logprob is not None:
            self._held_logprobs.append(logprob)
        text, stopped = self._stops.feed(piece)
        if stopped:
            self.finish_reason = FINISH_STOP
        elif self.generated >= self.request.max_chars:
            self.finish_reason = FINISH_LENGTH
            if self._decoder is not None:
                text += self._stops.feed(self._decoder.decode(b"", final=True))[0]
            text += self._stops.flush()
        return self._emit(text)

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
        return Piece(self, text, out, self.finish_reason)


class Batch:
    """The active sequences of one model, advanced together one token per step.

    Not thread-safe: one thread owns a batch and calls `add`, `step` and `cancel`.
    """

    def __init__(self, kernel: StepKernel, vocab: Vocab, cache: PromptCache | None = None) -> None:
        self.kernel, self.vocab = kernel, vocab
        self.cache = cache if cache is not None else PromptCache(max_bytes=0)
        self.seqs: list[Sequence] = []
        self._rows = 0
        self.state: tuple[Tensor, ...] = ()
        self.logits = torch.empty(0)
        self.recent = torch.empty(0)
        self._params: BatchParams | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    # -- membership -----------------------------------------------------------------------

    def _resize(self, n: int) -> None:
        rows = self.kernel.rows(n)
        if rows == self._rows:
            return
        keep = min(len(self.seqs), rows)
        state = self.kernel.zero_state(rows)
        logits = torch.zeros(rows, self.kernel.vocab_size, device=self.kernel.device)
        recent = torch.zeros(rows, self.kernel.vocab_size, device=self.kernel.device)
        self.feed = torch.zeros(rows, dtype=torch.int64, device=self.kernel.device)  # tokens to feed (pads: 0)
        if self._rows:
            for new, old in zip(state, self.state):
                new[:, :keep] = old[:, :keep]
            logits[:keep] = self.logits[:keep]
            recent[:keep] = self.recent[:keep]
        self.state, self.logits, self.recent, self._rows = state, logits, recent, rows

    def add(self, request: GenerationRequest, count: int = 1) -> list[Sequence]:
        """Prime `request`'s prompt once and start `count` sequences from it (seeds
        derived as in `charnet.sampling.derive_seed`), joining at the next step."""
        return self.add_many([(request, count)])[0]

    def add_many(self, items: list[tuple[GenerationRequest, int]]) -> list[list[Sequence]]:
        """`add` for several requests at once: their prompts prime together, as rows of
        one batch (see `PromptCache.prime_many`), which is what lets a burst of requests
        start in the time of its longest prompt rather than of all of them."""
        from charnet.sampling import derive_seed

        groups = []
        for request, count in items:
            base = Sequence(request, self.vocab)
            groups.append([base] + [Sequence(GenerationRequest(request.prompt, request.max_chars,
                                                               _reseed(base.request.params, derive_seed(base.seed, i)),
                                                               request.stop, request.logprobs), self.vocab)
                                    for i in range(1, count)])
        primed = self.cache.prime_many(self.kernel, [seqs[0].prompt_ids for seqs in groups])
        self._params = None
        try:
            for seqs, (state, logits) in zip(groups, primed):
                for seq in seqs:
                    self._join(seq, state, logits)
        except BaseException:  # all or nothing: no row may outlive a request that failed to start
            for seqs in groups:
                for seq in seqs:
                    self.cancel(seq)
            raise
        return groups

    def _join(self, seq: Sequence, state: tuple[Tensor, ...], logits: Tensor) -> None:
        """Give `seq` a row holding `state`, to sample its first token from `logits`."""
        if seq.request.max_chars == 0:
            seq.finish_reason = FINISH_LENGTH
            return
        self._resize(len(self.seqs) + 1)
        seq.row = len(self.seqs)
        self.seqs.append(seq)
        for dst, src in zip(self.state, state):
            dst[:, seq.row] = src[:, 0]
        self.logits[seq.row] = logits
        self.recent[seq.row].zero_()
        if seq.recent:
            self.recent[seq.row].index_add_(0, torch.tensor(seq.recent, device=self.recent.device),
                                            torch.ones(len(seq.recent), device=self.recent.device))

    def cancel(self, seq: Sequence) -> None:
        """Stop `seq` now and free its row."""
        if seq.row >= 0 and not seq.finished:
            seq.finish_reason = FINISH_CANCELLED
            self._remove([seq])

    def _remove(self, done: list[Sequence]) -> None:
        # Fill each freed row with the last active one: rows are independent, so
        # moving one changes nothing it computes.
        for seq in sorted(done, key=lambda s: s.row, reverse=True):
            if seq.finish_reason not in (FINISH_CANCELLED, FINISH_ERROR) and seq.tokens:
                # Remember the state after prompt and continuation (all but the last
                # token, which was sampled but never fed): a follow-up request that
                # sends them back primes only what it adds.
                ids = np.concatenate([seq.prompt_ids, np.asarray(seq.tokens[:-1], dtype=seq.prompt_ids.dtype)])
                self.cache.put(ids, tuple(t[:, seq.row:seq.row + 1] for t in self.state), self.logits[seq.row])
            last = len(self.seqs) - 1
            if seq.row != last:
                moved = self.seqs[last]
                for t in self.state:
                    t[:, seq.row] = t[:, last]
                self.logits[seq.row] = self.logits[last]
                self.recent[seq.row] = self.recent[last]
                moved.row = seq.row
                self.seqs[seq.row] = moved
            self.seqs.pop()
            seq.row = -1
        self._params = None
        if self.seqs:
            self._resize(len(self.seqs))

    # -- one step -------------------------------------------------------------------------

    def step(self) -> list[Piece]:
        """Advance every active sequence by one token; return one piece per sequence
        (finished sequences have left the batch when this returns)."""
        n = len(self.seqs)
        if not n:
            return []
        if self._params is None:
            self._params = BatchParams.of([s.request.params for s in self.seqs], self.kernel.vocab_size,
                                          self.kernel.device)
        params = self._params
        logits = self.logits[:n]
        if self.vocab.unk_id is not None:
            # The unknown id stands for characters the model never saw: not one to write.
            logits[:, self.vocab.unk_id] = float("-inf")
        seeds = np.fromiter((s.seed for s in self.seqs), dtype=np.uint64, count=n)
        steps = np.fromiter((s.generated for s in self.seqs), dtype=np.uint64, count=n)
        tokens = choose(logits, params, uniform(seeds, steps), self.recent[:n] if params.any_penalty else None)
        want = [s.request.logprobs for s in self.seqs]
        infos = self._logprobs(logits, tokens, want) if any(w is not None for w in want) else [None] * n
        token_list = tokens.tolist()
        pieces, done = [], []
        for seq, token, info in zip(self.seqs, token_list, infos):
            try:
                piece = seq._accept(token, self.vocab.piece(token), info)
            except Exception as e:  # one sequence's failure must not take the batch down
                seq.error, seq.finish_reason = e, FINISH_ERROR
                piece = Piece(seq, "", [], FINISH_ERROR)
            pieces.append(piece)
            if seq.finished:
                done.append(seq)
        if params.any_penalty:
            self._update_recent(token_list)
        if done:
            self._remove(done)
        if self.seqs:
            feed = self.feed
            if done:  # survivors may have moved rows
                feed[: len(self.seqs)] = torch.tensor([s.tokens[-1] for s in self.seqs], device=feed.device)
            else:
                feed[:n] = tokens
            self.logits.copy_(self.kernel.step(feed, self.state))
        return pieces

    def _update_recent(self, tokens: list[int]) -> None:
        for seq, token in zip(list(self.seqs), tokens):
            if seq.finished:
                continue
            seq.recent.append(token)
            self.recent[seq.row, token] += 1
            if len(seq.recent) > REPETITION_WINDOW:
                self.recent[seq.row, seq.recent.pop(0)] -= 1

    def _logprobs(self, logits: Tensor, tokens: Tensor, want: list[int | None]) -> list[CharLogprob | None]:
        logp = torch.log_softmax(logits.float(), dim=-1)
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
        k = max(w for w in want if w is not None)
        top_v, top_i = logp.topk(k, dim=-1) if k else (None, None)
        top_v = top_v.tolist() if k else None
        top_i = top_i.tolist() if k else None
        out: list[CharLogprob | None] = []
        for r, (w, token) in enumerate(zip(want, tokens.tolist())):
            if w is None:
                out.append(None)
                continue
            top = [(self.vocab.display(i), v) for i, v in zip(top_i[r][:w], top_v[r][:w])] if w else []
            out.append(CharLogprob(self.vocab.display(token), chosen[r], top))
        return out


def _reseed(params: SamplingParams, seed: int) -> SamplingParams:
    return SamplingParams(params.temperature, params.top_k, params.top_p, params.repetition_penalty, seed)
