"""Is a sample new, or memorised? Checked against an index of a corpus, built once and cached.

Line corpora (`charnet.documents`, ``documents="lines"``): every item a sample holds
(each non-empty line) is in the training split, in the validation split, or new, as
makemore reports it; the split is the one training used. The index is the sorted 64-bit
hashes of each split's lines.

Running text: for each sample, the longest substring it shares with the corpus, and the
fraction of its characters inside shared runs of at least `RUN` characters (torch-rnn's
novel_substrings.py asks the first). The index is a suffix array of the corpus' UTF-8
bytes (libdivsufsort, through pydivsufsort: about 11 s for 100 MB); for each position of a
sample the longest match starting there is found by binary searches in it, extending
the previous position's match (which, one character shorter, is known to occur), so a
sample of m characters costs about 2m searches of microseconds each, not a scan.

Indexes live under ``cache_dir()/novelty/``, keyed by the corpus' content hash, written
atomically.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charnet.atomic import atomic_file
from charnet.corpus import DEFAULT_SEPARATOR, cache_dir, fingerprint, iter_text, resolve_sources
from charnet.documents import DOCUMENTS, LINE_BREAK, text_lines, validation_lines
from charnet.errors import ConfigError, CorpusError

RUN = 20
"""A shared run this long or longer counts as copied text."""

WHERE = ("train", "validation", "new")


def _hash(line: str) -> int:
    return int.from_bytes(hashlib.blake2b(line.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@dataclass(frozen=True, kw_only=True)
class TextMatch:
    """How much of one running-text sample the corpus already holds."""

    longest: int
    """Characters of the longest substring the sample shares with the corpus."""

    longest_text: str
    """That substring (the first, if several are as long)."""

    shared_fraction: float
    """Fraction of the sample's characters inside shared runs of at least `RUN`."""


@dataclass(frozen=True, kw_only=True)
class NoveltyReport:
    """What a novelty check found, for line items or for running-text samples."""

    documents: str
    """``lines`` (`items` and `fractions` are filled in) or ``files`` (`matches`)."""

    items: list[tuple[str, str]]
    """(item, where): where is ``train``, ``validation`` or ``new``."""

    matches: list[TextMatch]
    """One per sample, in order."""

    @property
    def counts(self) -> dict[str, int]:
        """How many items are in each of `WHERE` (line corpora)."""
        return {w: sum(1 for _, where in self.items if where == w) for w in WHERE}

    @property
    def fractions(self) -> dict[str, float]:
        """The fraction of items in each of `WHERE` (line corpora)."""
        return {w: n / (len(self.items) or 1) for w, n in self.counts.items()}

    def to_dict(self) -> dict[str, Any]:
        if self.documents == "lines":
            return {"documents": "lines", "items": [{"text": t, "where": w} for t, w in self.items],
                    "fractions": self.fractions}
        return {"documents": "files", "run": RUN, "samples": [m.__dict__ for m in self.matches]}


class Novelty:
    """The novelty index of a corpus, read the way a model was trained on it."""

    def __init__(self, specs: list[str] | list[Path], *, documents: str = "files", val_fraction: float = 0.1,
                 encoding: str = "utf-8", separator: str = DEFAULT_SEPARATOR, cache: Path | None = None) -> None:
        if documents not in DOCUMENTS:
            raise ConfigError("documents", f"must be one of {', '.join(DOCUMENTS)}; got {documents!r}")
        self.documents, self.val_fraction, self.encoding = documents, val_fraction, encoding
        self.separator = LINE_BREAK if documents == "lines" else separator
        self.sources = resolve_sources(specs)
        if not self.sources.files:
            raise CorpusError("no corpus files given")
        key = fingerprint(self.sources, encoding, self.separator)
        self.folder = (cache or cache_dir()) / "novelty" / key[:32]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CorpusError(f"cannot create the novelty cache {self.folder} ({e.strerror}); set CHARNET_CACHE_DIR") from None
        self._lines: tuple[np.ndarray, np.ndarray] | None = None
        self._text: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def for_checkpoint(cls, specs: list[str] | list[Path], config: dict[str, Any], cache: Path | None = None) -> Novelty:
        """The index of `specs` read as the checkpoint (its config.json) was trained:
        line or running-text documents, its validation fraction, encoding, separator."""
        training, corpus = config.get("training") or {}, config.get("corpus") or {}
        return cls(specs, documents=training.get("documents", "files"), val_fraction=training.get("val_fraction", 0.1),
                   encoding=corpus.get("encoding", "utf-8"), separator=corpus.get("separator", DEFAULT_SEPARATOR),
                   cache=cache)

    def check(self, samples: list[str]) -> NoveltyReport:
        if self.documents == "lines":
            train, val = self._line_index()
            items = []
            for sample in samples:
                for item in text_lines(sample):
                    h = np.uint64(_hash(item))
                    where = "train" if _holds(train, h) else "validation" if _holds(val, h) else "new"
                    items.append((item, where))
            return NoveltyReport(documents="lines", items=items, matches=[])
        data, sa = self._text_index()
        return NoveltyReport(documents="files", items=[], matches=[_match(data, sa, s) for s in samples])

    # -- indexes --------------------------------------------------------------------------

    def _line_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._lines is None:
            path = self.folder / f"lines-{self.val_fraction!r}.npz"
            if not path.exists():
                hashes: list[int] = []
                pending = ""
                for chunk in iter_text(self.sources, self.encoding, self.separator):
                    complete, _, pending = (pending + chunk).rpartition(LINE_BREAK)  # a line may go on
                    hashes += map(_hash, text_lines(complete))
                hashes += map(_hash, text_lines(pending))
                every = np.array(hashes, dtype=np.uint64)
                held = validation_lines(len(every), self.val_fraction)
                with atomic_file(path) as f:
                    np.savez(f, train=np.sort(every[~held]), val=np.sort(every[held]))
            with np.load(path) as index:
                self._lines = index["train"], index["val"]
        return self._lines

    def _text_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._text is None:
            from pydivsufsort import divsufsort

            text_path, sa_path = self.folder / "text.utf8", self.folder / "suffixes.npy"
            if not (text_path.exists() and sa_path.exists()):
                with atomic_file(text_path) as f:
                    for chunk in iter_text(self.sources, self.encoding, self.separator):
                        f.write(chunk.encode("utf-8", "surrogatepass"))
                data = np.fromfile(text_path, dtype=np.uint8)
                if not len(data):
                    raise CorpusError("the novelty corpus is empty")
                with atomic_file(sa_path) as f:
                    np.save(f, divsufsort(data))
            # Copy-on-write maps: libdivsufsort's bindings want writable buffers, and
            # nothing is ever written back.
            data = np.memmap(text_path, dtype=np.uint8, mode="c")
            self._text = data, np.load(sa_path, mmap_mode="c")
        return self._text


def _holds(index: np.ndarray, h: np.uint64) -> bool:
    i = int(np.searchsorted(index, h))
    return i < len(index) and index[i] == h


def _match(data: np.ndarray, sa: np.ndarray, sample: str) -> TextMatch:
    """The matching statistics of `sample` against the corpus bytes: for each character,
    the longest match starting there, in characters."""
    from pydivsufsort import sa_search

    raw = sample.encode("utf-8", "surrogatepass")
    # Byte offset of every character boundary: matches are searched as bytes, measured in characters.
    bounds = np.concatenate([[0], np.cumsum([len(c.encode("utf-8", "surrogatepass")) for c in sample])]).astype(int)
    m = len(sample)
    lengths = np.zeros(m, dtype=np.int64)
    length = 0
    for i in range(m):
        # The previous match, one character shorter, occurs: only longer ones need a search.
        while i + length < m and sa_search(data, sa, raw[bounds[i]:bounds[i + length + 1]])[0] > 0:
            length += 1
        lengths[i] = length
        length = max(length - 1, 0)
    if m == 0:
        return TextMatch(longest=0, longest_text="", shared_fraction=0.0)
    best = int(np.argmax(lengths))
    cover = np.zeros(m + 1, dtype=np.int64)
    for i in np.flatnonzero(lengths >= RUN):
        cover[i] += 1
        cover[i + lengths[i]] -= 1
    inside = np.count_nonzero(np.cumsum(cover)[:m])
    return TextMatch(longest=int(lengths[best]), longest_text=sample[best:best + int(lengths[best])],
                     shared_fraction=inside / m)
