"""Batches of line documents (``--documents lines``; see `charnet.documents`).

Each row of a batch is one document: its input is `LINE_BREAK` then the line, its
targets the line then `LINE_BREAK`, so every document starts from the same state (the
zero state after a line break, what an empty prompt primes at sampling time) and the
model learns where it ends. Rows are padded to the batch's longest document (padding
targets are `IGNORE`); a document longer than ``seq_len`` is read in several windows
with the state carried, one optimizer step each.

Every epoch draws a new order from ``(seed, epoch)``: documents are shuffled, sorted by
length within pools of `POOL_BATCHES` batches (so rows of one batch have similar
lengths and little padding), cut into batches, and the batches shuffled again. The plan
of an epoch is a pure function of the seed and the epoch number, so a resumed run
continues it exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from charnet.documents import LINE_BREAK, validation_lines
from charnet.errors import CorpusError
from charnet.tokenizer import Vocab
from charnet.training.data import IGNORE

POOL_BATCHES = 64
"""Batches whose documents are sorted by length together: enough to group similar
lengths, few enough that every batch still mixes documents from across the corpus."""


class LineDocuments:
    """The line documents of an encoded corpus: where each starts in the ids and how
    many tokens it has (a trailing CR excluded), split into training and validation."""

    def __init__(self, ids: np.ndarray, vocab: Vocab, val_fraction: float) -> None:
        newline = vocab.token_id(LINE_BREAK)
        if newline is None:
            raise CorpusError("line documents need a vocabulary with the line break in it")
        breaks = np.flatnonzero(np.asarray(ids) == newline)
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [len(ids)]])
        cr = vocab.token_id("\r")
        if cr is not None:
            has_cr = (ends > starts) & (np.asarray(ids)[np.maximum(ends - 1, 0)] == cr)
            ends = ends - has_cr
        keep = ends > starts
        self.ids, self.newline = ids, newline
        self.starts, self.lengths = starts[keep], (ends - starts)[keep]
        if len(self.starts) == 0:
            raise CorpusError("the corpus has no non-empty lines")
        self.held = validation_lines(len(self.starts), val_fraction)
        if val_fraction > 0 and not self.held.any():
            raise CorpusError(f"the validation split would hold no lines of {len(self.starts)}; use a corpus with more "
                              "lines, a larger --val-fraction, or --val-fraction 0")

    def __len__(self) -> int:
        return len(self.starts)

    def part(self, validation: bool) -> np.ndarray:
        """Indices of the training (or validation) documents, in corpus order."""
        return np.flatnonzero(self.held == validation)

    def chars(self, docs: np.ndarray) -> int:
        """Training characters of these documents (each one's tokens, not the breaks)."""
        return int(self.lengths[docs].sum())

    def window(self, docs: np.ndarray, lo: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of positions [lo, lo + width) of each document's sequence,
        padded; each (len(docs), width) int64."""
        x = np.zeros((len(docs), width), dtype=np.int64)
        y = np.full((len(docs), width), IGNORE, dtype=np.int64)
        for row, doc in enumerate(docs):
            s, n = int(self.starts[doc]), int(self.lengths[doc])
            seq = np.empty(n + 2, dtype=np.int64)  # break, line, break
            seq[0] = seq[-1] = self.newline
            seq[1:-1] = self.ids[s:s + n]
            part = seq[lo:lo + width + 1]
            if len(part) > 1:
                x[row, : len(part) - 1] = part[:-1]
                y[row, : len(part) - 1] = part[1:]
        return torch.from_numpy(x), torch.from_numpy(y)


class _Windows:
    """Batches of documents read window by window: step k is one window of one batch."""

    def __init__(self, documents: LineDocuments, batches: list[np.ndarray], seq_len: int) -> None:
        self.documents, self.batches, self.seq_len = documents, batches, seq_len
        # Each batch's most targets in a row (a document's tokens and its closing break),
        # and the step of its first window.
        self.longest = [int(documents.lengths[b].max() + 1) if len(b) else 1 for b in batches]
        self.first = np.concatenate([[0], np.cumsum([-(-n // seq_len) for n in self.longest])])

    def __len__(self) -> int:
        return int(self.first[-1])

    def _locate(self, k: int) -> tuple[int, int]:
        b = int(np.searchsorted(self.first, k, side="right")) - 1
        return b, k - int(self.first[b])

    def fresh(self, k: int) -> bool:
        """Whether window k starts its documents (from the zero state)."""
        return self._locate(k)[1] == 0

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, w = self._locate(k)
        lo = w * self.seq_len
        return self.documents.window(self.batches[b], lo, min(self.seq_len, self.longest[b] - lo))


class LineBatches:
    """The training documents in epochs of shuffled, length-pooled batches."""

    def __init__(self, documents: LineDocuments, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.documents, self.seq_len, self.seed = documents, seq_len, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.train = documents.part(validation=False)
        total = batch_size * world_size
        if len(self.train) < total:
            raise CorpusError(
                f"the training split has {len(self.train):,} lines, fewer than one batch needs ({total:,} = batch size "
                f"{batch_size}{f' x {world_size} processes' if world_size > 1 else ''}); use a larger corpus or a "
                "smaller --batch-size")
        self.chars = documents.chars(self.train)

    def epoch(self, number: int) -> _Windows:
        """The plan of epoch `number`: this process' rows of every batch."""
        rng = np.random.default_rng([self.seed, number])
        total = self.batch_size * self.world_size
        # What would fill a last, partial batch is left out (every process needs its full
        # share of rows), chosen before sorting: at random, so no document is left out
        # every epoch, rather than always the longest.
        order = self.train[rng.permutation(len(self.train))][: len(self.train) // total * total]
        pool = total * POOL_BATCHES
        pooled = [chunk[np.argsort(self.documents.lengths[chunk], kind="stable")]
                  for chunk in (order[i:i + pool] for i in range(0, len(order), pool))]
        flat = np.concatenate(pooled)
        batches = [flat[i:i + total] for i in range(0, len(flat), total)]
        batches = [batches[i][self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
                   for i in rng.permutation(len(batches))]
        return _Windows(self.documents, batches, self.seq_len)


class LineEval(_Windows):
    """Validation documents, each scored exactly once from the start-of-document state:
    sorted by length into batches of `batch_size` (less padding); with `max_chars`, only
    the first documents of the split (in corpus order) up to that many characters."""

    def __init__(self, documents: LineDocuments, batch_size: int, seq_len: int, max_chars: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        docs = documents.part(validation=True)
        if max_chars is not None:
            docs = docs[: max(1, int(np.searchsorted(np.cumsum(documents.lengths[docs] + 1), max_chars)) + 1)]
        docs = docs[rank::world_size]
        docs = docs[np.argsort(documents.lengths[docs], kind="stable")]
        super().__init__(documents, [docs[i:i + batch_size] for i in range(0, len(docs), batch_size)], seq_len)
        self.targets = int((documents.lengths[docs] + 1).sum())
