"""Continuous batching: many sequences advanced together, one token per step.

A `Batch` holds the recurrent state of every sequence that has a row, as rows of one
(layers, rows, hidden) tensor. Each `step` advances every row by one token in one kernel
call: a sampling row feeds the token it samples from its pending logits, a priming row
feeds the next token of its prompt. Priming is therefore chunked by construction: a
prompt of any length costs its row one token a step, interleaved with everyone else's
characters, and a sequence that is cancelled or times out leaves between two steps. The
state is cached at the prompt cache's marks (every `BLOCK` tokens and the prompt's end),
so cached, cold and interleaved priming all give the same bits. A batch holding one
priming row and nothing else primes it a block at a time instead (`StepKernel.prime`,
the same arithmetic, faster alone). A prompt is primed once however many requests
bring it at once: a sequence whose prompt a row is priming waits for that row's state
(`_join`) rather than priming it beside it.

Rows come and go between steps: `add` creates a request's sequences, `admit` gives one
a row (a batch with ``auto_admit`` admits every ready sequence itself), `suspend` takes
a row back while keeping the sequence's state, so it resumes later exactly where it was
(a scheduler's fairness), and `cancel` ends one.

A sequence's output does not depend on its neighbours: the kernel computes each row
independently (see `charnet.inference.kernel`), and its random draws are a pure function of its
own seed and step count (see `charnet.inference.sampling`). So a request served in a batch of 64,
suspended and resumed, yields exactly what it yields alone. One row's failure while
sampling (its settings, its logprobs, its text) ends that sequence only.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from charnet.errors import ConfigError
from charnet.inference.constraints import Masks, prefetch
from charnet.inference.draw import draw
from charnet.inference.generation import FINISH_CANCELLED, FINISH_ERROR, FINISH_LENGTH, Piece, Sequence, Snapshot
from charnet.inference.kernel import StepKernel
from charnet.inference.prompt_cache import PromptCache
from charnet.inference.request import GenerationRequest
from charnet.inference.sampling import REPETITION_WINDOW, BatchParams
from charnet.documents import DEFAULT_START
from charnet.tokenizer import Vocab

log = logging.getLogger("charnet.inference")


class Batch:
    """The sequences of one model, those with rows advanced together one token per step.

    Not thread-safe: one thread owns a batch and calls its methods.
    """

    def __init__(self, kernel: StepKernel, vocab: Vocab, cache: PromptCache | None = None, *,
                 auto_admit: bool = True, document_start: str = DEFAULT_START) -> None:
        """`document_start`: what an empty prompt primes (`Checkpoint.document_start`)."""
        self.kernel, self.vocab = kernel, vocab
        self.start = vocab.encode(document_start)
        self.cache = cache if cache is not None else PromptCache(max_bytes=0)
        self.auto_admit = auto_admit
        self.seqs: list[Sequence] = []  # the sequences with rows, by row
        self.waiting: list[Sequence] = []  # unfinished, without a row (ready or not), in order of arrival
        self._rows = 0
        self.state: tuple[Tensor, ...] = ()
        self.logits = torch.empty(0)
        self.recent = torch.empty(0)
        self.counts = torch.empty(0)  # (rows, V): how often each row generated each token
        self._params: BatchParams | None = None  # of the sampling rows, until rows change
        self.revision = 0
        """Counts changes of membership and readiness (sequences added, admitted, forked,
        suspended or gone): whoever shares rows among requests need only look again
        when it moves."""

    def __len__(self) -> int:
        """Unfinished sequences, with a row or not."""
        return len(self.seqs) + len(self.waiting)

    @property
    def rows(self) -> int:
        """Sequences with a row."""
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
        counts = torch.zeros(rows, self.kernel.vocab_size, device=self.kernel.device)
        self.feed = torch.zeros(rows, dtype=torch.int64, device=self.kernel.device)  # tokens to feed (pads: 0)
        if self._rows:
            for new, old in zip(state, self.state):
                new[:, :keep] = old[:, :keep]
            logits[:keep] = self.logits[:keep]
            recent[:keep] = self.recent[:keep]
            counts[:keep] = self.counts[:keep]
        self.state, self.logits, self.recent, self.counts, self._rows = state, logits, recent, counts, rows

    def add(self, request: GenerationRequest, count: int = 1) -> list[Sequence]:
        """`count` sequences of `request`, without rows: the first primes the prompt, the
        others fork from it when it is primed (their seeds derived as in
        `charnet.inference.sampling.derive_seed`)."""
        request = request.for_vocab(self.vocab)
        leader = Sequence(request, self.vocab, start=self.start)
        seqs = [leader] + [leader.sibling(i, self.vocab) for i in range(1, count)]
        self.revision += 1
        if request.max_chars == 0:
            for seq in seqs:
                seq.finish_reason = FINISH_LENGTH
            return seqs
        self.waiting += seqs
        return seqs

    def reserve(self, n: int) -> None:
        """Room for `n` more sequences with rows, made at once. `admit` resizes the
        batch's tensors (new ones, the rows copied over) only when no row is free, so
        admitting a burst one by one resized them for each: 62 us an admission of its
        140, on 2 cores. `trim` gives back the rows `admit` did not take."""
        if len(self.seqs) + n > self._rows:
            self._resize(len(self.seqs) + n)

    def trim(self) -> None:
        """Give back free rows beyond those the sequences need: those of sequences that
        left, or reserved for ones that joined another's priming instead of taking one."""
        if self.seqs:
            self._resize(len(self.seqs))

    def admit(self, seq: Sequence) -> None:
        """Give a ready sequence a row: its snapshot's state, or (a leader starting) the
        state after the longest cached prefix of its prompt."""
        assert seq.ready, "only a ready sequence can take a row"
        self.revision += 1
        if seq.snapshot is not None:
            (state, logits), seq.snapshot = seq.snapshot, None
        else:
            start, entry = self.cache.lookup(seq.prompt_ids)
            if start < len(seq.prompt_ids) and self._join(seq, start):
                return
            self.cache.hits += entry is not None
            self.cache.misses += entry is None
            seq.primed = start
            if entry is not None:
                state, logits = entry.state, entry.logits
            else:
                state, logits = self.kernel.initial()
            if seq.priming:
                seq.marks = self.cache.digests(seq.prompt_ids, self.cache.marks(start, len(seq.prompt_ids)))
        self.waiting.remove(seq)
        if len(self.seqs) == self._rows:
            self._resize(len(self.seqs) + 1)
        seq.row = len(self.seqs)
        self.seqs.append(seq)
        for dst, src in zip(self.state, state):
            dst[:, seq.row] = src[:, 0]
        self.logits[seq.row] = logits
        for table, tokens in ((self.recent, seq.recent), (self.counts, seq.tokens)):
            table[seq.row].zero_()
            if tokens:
                table[seq.row].index_add_(0, torch.tensor(tokens, device=table.device),
                                          torch.ones(len(tokens), device=table.device))
        self._params = None
        if not seq.priming:
            self._fork(seq)

    def _join(self, seq: Sequence, start: int) -> bool:
        """Whether `seq` waits (without a row) for a row priming the same prompt, at least
        as far as the `start` the cache gives it, rather than priming it a second time
        beside it. Requests that arrive together with a prompt the cache does not hold
        yet then prime it once; each starts from the same bits as priming it itself.

        Why: in a burst of 64 streams over four prompts, after one client's requests,
        22-34 requests primed a prompt another was priming, each a row of every step
        until done; the last first character came at 64-70 ms (42-45 ms joining)."""
        primer = next((s for s in self.seqs if s.priming and s.primed >= start
                       and np.array_equal(s.prompt_ids, seq.prompt_ids)), None)
        if primer is not None:
            seq.join(primer)
        return primer is not None

    def _let_go(self, seq: Sequence) -> None:
        """Sequences of other requests waiting for `seq` to prime (it stops or loses its
        row first) prime their prompts themselves."""
        joined = [f for f in seq.followers if f.joined]
        seq.followers = [f for f in seq.followers if not f.joined]
        for follower in joined:
            follower.part()
        self.revision += bool(joined)

    def _snapshot(self, seq: Sequence) -> Snapshot:
        r = seq.row
        return tuple(t[:, r:r + 1].clone() for t in self.state), self.logits[r].clone()

    def _fork(self, seq: Sequence) -> None:
        """`seq` has primed its prompt: its followers can start from its state."""
        self.revision += bool(seq.followers)
        for follower in seq.followers:
            if follower.snapshot is None and not follower.finished:
                follower.snapshot = self._snapshot(seq)
                follower.primed = len(follower.prompt_ids)
        seq.followers = []

    def suspend(self, seq: Sequence) -> None:
        """Take `seq`'s row away, keeping its state for `admit` to restore."""
        if seq.row < 0:
            return
        self._let_go(seq)
        seq.snapshot = self._snapshot(seq)
        self._drop_rows([seq])
        self.waiting.append(seq)

    def cancel(self, seq: Sequence) -> None:
        """Stop `seq` now and free its row (a leader still priming takes the samples
        waiting on its prompt with it)."""
        self._end(seq, FINISH_CANCELLED)

    def _end(self, seq: Sequence, reason: str, error: Exception | None = None) -> None:
        if seq.finished:
            return
        seq.finish_reason, seq.error = reason, error
        if seq.row >= 0:
            self._drop_rows([seq])
        elif seq in self.waiting:
            self.waiting.remove(seq)
            self.revision += 1
        self._let_go(seq)
        for follower in seq.followers:  # its own request's, never forked: nothing will prime their prompt
            self._end(follower, reason, error)
        seq.followers = []

    def _drop_rows(self, leaving: list[Sequence]) -> None:
        # Fill each freed row with the last one: rows are independent, so moving one
        # changes nothing it computes.
        if not leaving:
            return
        self.revision += 1
        for seq in sorted(leaving, key=lambda s: s.row, reverse=True):
            last = len(self.seqs) - 1
            if seq.row != last:
                moved = self.seqs[last]
                for t in self.state:
                    t[:, seq.row] = t[:, last]
                self.logits[seq.row] = self.logits[last]
                self.recent[seq.row] = self.recent[last]
                self.counts[seq.row] = self.counts[last]
                moved.row = seq.row
                self.seqs[seq.row] = moved
            self.seqs.pop()
            seq.row = -1
        self._params = None
        self.trim()

    def _retire(self, done: list[Sequence]) -> None:
        """Free the rows of sequences that finished this step, caching the state after
        prompt and continuation (all but the last token, sampled but never fed): a
        follow-up request that sends them back primes only what it adds. That caching
        only saves work: if it fails, nothing and nobody else does."""
        for seq in done:
            if seq.finish_reason != FINISH_ERROR and seq.tokens:
                ids = np.concatenate([seq.prompt_ids, np.asarray(seq.tokens[:-1], dtype=seq.prompt_ids.dtype)])
                try:
                    self.cache.put(ids, tuple(t[:, seq.row:seq.row + 1] for t in self.state), self.logits[seq.row])
                except Exception:
                    log.exception("caching the state after a finished generation failed")
        self._drop_rows(done)

    # -- one step -------------------------------------------------------------------------

    def step(self) -> list[Piece]:
        """Advance every row by one token; return a piece per sampling row, and one for
        each priming row that failed (finished sequences have left the batch when this
        returns)."""
        if self.auto_admit and self.waiting:
            ready = [s for s in self.waiting if s.ready]
            self.reserve(len(ready))
            for seq in ready:
                self.admit(seq)
            self.trim()
        n = len(self.seqs)
        if not n:
            return []
        sampling = [s for s in self.seqs if not s.priming]
        if not sampling and n == 1:
            return self._prime_alone(self.seqs[0])
        pieces, done, tokens = self._sample(sampling) if sampling else ([], [], None)
        self._retire(done)  # survivors may move rows
        if not self.seqs:
            return pieces
        feed = self.feed
        if tokens is not None and len(sampling) == n and not done:
            if len(tokens) == self._rows:
                feed = tokens  # no padding rows: the sampled tokens are the feed
            else:
                self.feed[:n] = tokens
        else:
            self.feed[:len(self.seqs)] = torch.tensor(
                [int(s.prompt_ids[s.primed]) if s.priming else s.tokens[-1] for s in self.seqs], device=self.feed.device)
        prefetch([s.matcher for s in self.seqs if s.matcher is not None and not s.priming], self.vocab.size)
        self.kernel.step(feed, self.state, out=self.logits)
        for seq in [s for s in self.seqs if s.priming]:
            seq.primed += 1
            self.cache.primed_tokens += 1
            pieces += self._primed_to(seq)
        return pieces

    def _primed_to(self, seq: Sequence) -> list[Piece]:
        """Cache `seq`'s state if its priming reached a mark; fork it once complete. A
        failure here ends `seq` alone: [its error piece]."""
        try:
            digest = seq.marks.get(seq.primed)
            if digest is not None:
                r = seq.row
                self.cache.put(seq.prompt_ids[:seq.primed], tuple(t[:, r:r + 1] for t in self.state),
                               self.logits[r], digest)
            if not seq.priming:
                seq.marks = {}
                self._params = None  # it samples from the next step on
                self._fork(seq)
        except Exception as e:
            self._end(seq, FINISH_ERROR, e)
            return [Piece(seq=seq, text="", logprobs=[], finish_reason=FINISH_ERROR)]
        return []

    def _prime_alone(self, seq: Sequence) -> list[Piece]:
        """The only row primes: a block at a time, layer by layer (`StepKernel.prime`)."""
        end = next((m for m in seq.marks if m > seq.primed), len(seq.prompt_ids))
        ids = torch.from_numpy(seq.prompt_ids[seq.primed:end].astype(np.int64)).to(self.kernel.device)
        views = tuple(t[:, 0:1] for t in self.state)
        self.logits[0] = self.kernel.prime(ids, views)
        self.cache.primed_tokens += end - seq.primed
        seq.primed = end
        return self._primed_to(seq)

    def _sample(self, seqs: list[Sequence]) -> tuple[list[Piece], list[Sequence], Tensor | None]:
        """Sample a token for each of `seqs` (rows in the batch, in row order) and turn
        it into text: (pieces, the sequences that finished, the tokens as a tensor when
        every row sampled one). A row whose sampling raises ends with FINISH_ERROR."""
        rows = [s.row for s in seqs]
        masks = Masks.of(seqs, self.vocab, self.kernel.device)
        tables, fused = (self.logits, self.recent, self.counts), self.kernel.fused
        try:
            if self._params is None:
                self._params = BatchParams.of([s.request.params for s in seqs], self.kernel.vocab_size,
                                              self.kernel.device)
            tokens, infos = draw(tables, len(self.seqs), rows, seqs, self._params, masks.allowed, self.vocab, fused)
            token_list: list[int | None] = tokens.tolist()
        except Exception:  # find the row at fault: each row draws what it draws in any batch
            self._params, tokens, token_list, infos = None, None, [], []
            for i, (row, seq) in enumerate(zip(rows, seqs)):
                try:
                    params = BatchParams.of([seq.request.params], self.kernel.vocab_size, self.kernel.device)
                    allowed = None if masks.allowed is None else masks.allowed[i:i + 1]
                    one, info = draw(tables, len(self.seqs), [row], [seq], params, allowed, self.vocab, fused)
                    token_list.append(one.item())
                    infos += info
                except Exception as e:
                    seq.error = e
                    token_list.append(None)
                    infos.append(None)
        pieces, done = [], []
        for i, (seq, token, info) in enumerate(zip(seqs, token_list, infos)):
            try:
                if token is None:
                    raise seq.error
                if i in masks.dead:
                    raise ConfigError(seq.matcher.constraint.kind, "no character of the model's vocabulary can "
                                      f"continue it after {seq.text[-40:]!r}")
                if i in masks.may_end and not masks.may_end[i][token]:
                    piece = seq.end_unmatched()
                else:
                    piece = seq._accept(token, self.vocab.piece(token), info)
            except Exception as e:  # one sequence's failure must not take the batch down
                seq.error, seq.finish_reason = e, FINISH_ERROR
                piece = Piece(seq=seq, text="", logprobs=[], finish_reason=FINISH_ERROR)
            pieces.append(piece)
            if seq.finished:
                done.append(seq)
                continue
            p = seq.request.params
            if p.repetition_penalty != 1.0:
                self._update_recent(seq, token)
            if p.frequency_penalty or p.presence_penalty:
                self.counts[seq.row, token] += 1
        return pieces, done, tokens

    def _update_recent(self, seq: Sequence, token: int) -> None:
        seq.recent.append(token)
        self.recent[seq.row, token] += 1
        if len(seq.recent) > REPETITION_WINDOW:
            self.recent[seq.row, seq.recent.pop(0)] -= 1
