"""Encoded corpora, cached on disk, and the batches training reads from them.

The first run over a corpus scans it once (character counts for the vocabulary) and
encodes it once, chunk by chunk, into a flat uint16/uint32 file under the cache
directory. Later runs find both by the corpus' content hash and the vocabulary's
fingerprint and memory-map the ids, so start-up takes seconds and memory stays flat
however large the corpus is.

Training reads *contiguous streams*, as char-rnn and torch-rnn do: the split is cut
into ``batch_size x world_size`` equal streams, and step k of an epoch feeds window k of
every stream, so the recurrent state carried from one batch to the next belongs to the
text that follows.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charnet.atomic import atomic_file, atomic_write_bytes
from charnet.corpus import DEFAULT_SEPARATOR, Sources, cache_dir, fingerprint, iter_text, resolve_sources
from charnet.errors import CorpusError
from charnet.tokenizer import Vocab, vocab_for

_SAMPLE_CHARS = 1 << 16
_BINCOUNT_SLICE = 1 << 20


@dataclass
class CorpusStats:
    """What one scan of the text learns: its length and character counts."""

    chars: int
    utf8_bytes: int
    char_counts: dict[str, int]
    byte_counts: list[int]

    def unigram_bits(self, kind: str) -> float:
        """Entropy of the unigram distribution in bits per token: the loss of a model
        that ignores all context, the baseline every trained model must beat."""
        counts = np.array(self.byte_counts if kind == "byte" else list(self.char_counts.values()), dtype=np.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log2(p)).sum())


def _scan(sources: Sources, encoding: str, separator: str) -> CorpusStats:
    counts = np.zeros(0, dtype=np.int64)
    for chunk in iter_text(sources, encoding, separator):
        codepoints = np.frombuffer(chunk.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        # bincount converts its input to int64: slice it so that copy stays small.
        for start in range(0, len(codepoints), _BINCOUNT_SLICE):
            binned = np.bincount(codepoints[start:start + _BINCOUNT_SLICE])
            if len(binned) > len(counts):
                binned[: len(counts)] += counts
                counts = binned
            else:
                counts[: len(binned)] += binned
    char_counts = {chr(cp): int(counts[cp]) for cp in np.flatnonzero(counts)}
    # Every occurrence of a character contributes its UTF-8 bytes: byte counts follow
    # exactly from character counts, without encoding the text a second way.
    byte_counts = [0] * 256
    for char, n in char_counts.items():
        for b in char.encode("utf-8", "surrogatepass"):
            byte_counts[b] += n
    return CorpusStats(chars=int(counts.sum()), utf8_bytes=sum(byte_counts), char_counts=char_counts,
                       byte_counts=byte_counts)


@dataclass(kw_only=True)
class EncodedCorpus:
    """A corpus as token ids (memory-mapped), with its vocabulary and provenance."""

    ids: np.ndarray
    vocab: Vocab
    sha256: str
    stats: CorpusStats
    sources: Sources
    encoding: str
    separator: str
    specs: list[str]
    """The corpus arguments as given (paths made absolute), to find it again on resume."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def unknown(self) -> int:
        """Tokens that fell outside the vocabulary (only with a vocabulary given)."""
        return self.vocab.count_unknown(self.ids)

    def split(self, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """(train, val): validation is the last `val_fraction` of the corpus, as in
        nanoGPT's shakespeare_char (first 90% train, last 10% val)."""
        n_val = int(len(self.ids) * val_fraction)
        if val_fraction > 0 and n_val < 2:
            raise CorpusError(
                f"the validation split would hold {n_val} characters of {len(self.ids)}; "
                "use a larger corpus, a larger --val-fraction, or --val-fraction 0"
            )
        return self.ids[: len(self.ids) - n_val], self.ids[len(self.ids) - n_val:]

    def describe(self) -> dict:
        return {
            "sha256": self.sha256,
            "chars": self.stats.chars,
            "tokens": len(self.ids),
            "files": len(self.sources.files),
            "specs": self.specs,
            "paths": [str(p) for p in self.sources.files[:20]],
            "encoding": self.encoding,
            "separator": self.separator,
        }


def load_corpus(
    specs: list[str] | list[Path],
    *,
    tokenizer: str = "char",
    vocab: Vocab | None = None,
    extend: bool = False,
    require: str = "",
    encoding: str = "utf-8",
    separator: str = DEFAULT_SEPARATOR,
    cache: Path | None = None,
) -> EncodedCorpus:
    """Resolve, validate, scan and encode a corpus, reusing the on-disk cache.

    With `vocab` given (resuming, evaluating) the text is encoded with it and unseen
    characters become its unknown id, unless `extend` (fine-tuning) appends them to
    it (`Vocab.extended`); otherwise a `tokenizer` vocabulary is built from the
    characters of the corpus. The characters of `require` get ids either way (a
    line corpus needs its line break even when it holds a single line).
    """
    sources = resolve_sources(specs)
    if not sources.files:
        raise CorpusError("no corpus files given")
    if all(p.stat().st_size == 0 for p in sources.files):
        raise CorpusError(f"corpus is empty ({', '.join(str(p) for p in sources.files[:3])})")
    key = fingerprint(sources, encoding, separator)
    folder = (cache or cache_dir()) / "corpora" / key[:32]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusError(f"cannot create the corpus cache {folder} ({e.strerror}); set CHARNET_CACHE_DIR") from None

    meta_path = folder / "stats.json"
    stats = None
    if meta_path.exists():
        try:
            stats = CorpusStats(**json.loads(meta_path.read_text("utf-8")))
        except (ValueError, TypeError):
            stats = None  # a damaged cache entry is rebuilt, never trusted
    if stats is None:
        stats = _scan(sources, encoding, separator)
        atomic_write_bytes(meta_path, json.dumps(stats.__dict__, ensure_ascii=True).encode())
    if stats.chars == 0:
        raise CorpusError("corpus is empty")

    chars = [*stats.char_counts, *require]
    vocab = (vocab.extended(chars) if extend else vocab) if vocab is not None else vocab_for(tokenizer, chars)
    n_tokens = stats.utf8_bytes if vocab.kind == "byte" else stats.chars
    ids_path = folder / f"{vocab.fingerprint[:24]}.{vocab.dtype.name}"
    if not (ids_path.exists() and ids_path.stat().st_size == n_tokens * vocab.dtype.itemsize):
        _encode_to(ids_path, sources, encoding, separator, vocab, n_tokens)
    ids = np.memmap(ids_path, dtype=vocab.dtype, mode="r", shape=(n_tokens,))
    specs = [str(Path(s).resolve()) if Path(s).exists() else str(s) for s in specs]
    return EncodedCorpus(ids=ids, vocab=vocab, sha256=key, stats=stats, sources=sources, encoding=encoding,
                         separator=separator, specs=specs)


def _encode_to(path: Path, sources: Sources, encoding: str, separator: str, vocab: Vocab, n_tokens: int) -> None:
    try:
        with atomic_file(path) as f:
            written, checked = 0, False
            for chunk in iter_text(sources, encoding, separator):
                if not checked:
                    vocab.check(chunk[:_SAMPLE_CHARS])
                    checked = True
                ids = vocab.encode(chunk)
                ids.tofile(f)
                written += len(ids)
            if written != n_tokens:
                raise CorpusError("corpus changed while it was being read; run again")
    except OSError as e:
        raise CorpusError(f"cannot write the encoded corpus to {path.parent} ({e.strerror}); set CHARNET_CACHE_DIR") from None


class Streams:
    """Contiguous streams over a token array for truncated BPTT.

    The array is cut into ``batch_size * world_size`` streams of equal length; this
    process (`rank`) owns `batch_size` consecutive ones, so a single process with the
    same global batch sees exactly the streams of all ranks together. Window k of an
    epoch is positions ``[k*T, (k+1)*T)`` of every stream, targets shifted by one.
    """

    def __init__(self, data: np.ndarray, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1) -> None:
        total = batch_size * world_size
        self.stream_len = (len(data) - 1) // total
        self.steps_per_epoch = self.stream_len // seq_len
        if self.steps_per_epoch < 1:
            need = total * seq_len + 1
            raise CorpusError(
                f"the training split has {len(data):,} characters, fewer than one batch needs "
                f"({need:,} = batch size {batch_size}{f' x {world_size} processes' if world_size > 1 else ''} "
                f"x seq len {seq_len} + 1); use a larger corpus or a smaller --batch-size or --seq-len"
            )
        self.data = data
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.starts = (rank * batch_size + np.arange(batch_size)) * self.stream_len
        self.chars = len(data)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def epoch(self, number: int) -> Streams:
        """The plan of an epoch: every epoch reads the same windows."""
        return self

    def fresh(self, k: int) -> bool:
        """Whether window k starts from the zero state: the first of every epoch."""
        return k == 0

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64, for window k."""
        t = self.seq_len
        windows = np.stack([self.data[s + k * t: s + k * t + t + 1] for s in self.starts]).astype(np.int64)
        windows = torch.from_numpy(windows)
        return windows[:, :-1], windows[:, 1:]


IGNORE = -100
"""Target id of padding in `EvalStreams` and line batches (what cross-entropy's
ignore_index skips)."""


class EvalStreams:
    """A split scored exactly once: every token after the first is predicted from all
    that precedes it in its stream, whatever the split's length.

    The targets ``data[1:]`` are cut into (at most) `batch_size` contiguous streams of
    equal length, read in windows of `seq_len` with the state carried; the last stream
    and the last window may be shorter, their padding (target `IGNORE`) scores nothing.
    """

    def __init__(self, data: np.ndarray, batch_size: int, seq_len: int, max_chars: int | None = None) -> None:
        if max_chars is not None and len(data) > max_chars + 1:
            data = data[: max_chars + 1]
        n = len(data) - 1
        self.data, self.seq_len = data, seq_len
        self.batch_size = max(1, min(batch_size, n // seq_len)) if n > 0 else 0
        self.stream_len = -(-n // self.batch_size) if self.batch_size else 0
        self.starts = np.arange(self.batch_size) * self.stream_len
        self.n = n

    def __len__(self) -> int:
        return -(-self.stream_len // self.seq_len)

    def fresh(self, k: int) -> bool:
        """Whether window k starts from the zero state (the first; the rest carry it)."""
        return k == 0

    @property
    def targets(self) -> int:
        """Tokens this (share of the) split scores."""
        return int(sum(min(self.stream_len, self.n - s) for s in self.starts))

    def shard(self, dist) -> EvalStreams:
        """This process' share of the streams (every world_size-th); it may hold none
        when there are fewer streams than processes."""
        if dist.world_size == 1:
            return self
        part = copy.copy(self)
        part.starts = self.starts[dist.rank::dist.world_size]
        part.batch_size = len(part.starts)
        return part

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of window k, each (batch_size, up to seq_len) int64."""
        lo = k * self.seq_len
        width = min(self.seq_len, self.stream_len - lo)
        x = np.zeros((len(self.starts), width), dtype=np.int64)
        y = np.full((len(self.starts), width), IGNORE, dtype=np.int64)
        for row, start in enumerate(self.starts):
            end = min(start + lo + width, self.n)  # this stream's targets end before the split's
            if end > start + lo:
                x[row, : end - start - lo] = self.data[start + lo: end]
                y[row, : end - start - lo] = self.data[start + lo + 1: end + 1]
        return torch.from_numpy(x), torch.from_numpy(y)
