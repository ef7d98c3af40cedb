"""Finding and reading corpus text: files, directories and globs, in bounded memory.

A corpus is an ordered list of documents (files). Their text is the documents joined
with a separator (`DEFAULT_SEPARATOR`, a blank line, unless the caller picks another),
read in chunks so a corpus larger than memory streams through. What charnet derives from a
corpus (its encoded ids, a novelty index) is cached under `cache_dir`.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from charnet.errors import CorpusError

DEFAULT_SEPARATOR = "\n\n"
"""Put between documents: a blank line, so a model never sees two files run together
mid-line, and sampling at a document boundary starts a fresh paragraph."""

CHUNK_BYTES = 4 << 20
_SNIFF_BYTES = 8192
_BOM = codecs.BOM_UTF8


def bundled_corpus() -> Path:
    """`corpora/shakespeare.txt` of a source checkout (the default training corpus)."""
    return Path(__file__).resolve().parents[1] / "corpora" / "shakespeare.txt"


def cache_dir() -> Path:
    """``$CHARNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/charnet``, else ``~/.cache/charnet``."""
    if env := os.environ.get("CHARNET_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charnet"


def _sniff(path: Path) -> str | None:
    """Why a file found inside a directory cannot be a document ("binary", or why it
    cannot be read), or None for a readable text file. Nothing but regular files is
    opened: a FIFO would block, a dangling link has nothing to read."""
    try:
        if not path.is_file():
            return "dangling link" if path.is_symlink() and not path.exists() else "not a regular file"
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    return "binary" if b"\0" in head else None  # git's heuristic: a NUL byte near the start


def _walk(directory: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / name for name in sorted(files) if not name.startswith(".")]
    return found


@dataclass(frozen=True, kw_only=True)
class Sources:
    """The documents of a corpus, in reading order."""

    files: tuple[Path, ...]
    skipped_binary: tuple[Path, ...] = ()
    skipped_unreadable: tuple[tuple[Path, str], ...] = ()
    """Files inside a directory that could not be read, and why (a dangling link, a
    FIFO, no permission)."""


def resolve_sources(specs: list[str] | list[Path]) -> Sources:
    """Expand files, directories (recursively) and globs (``**`` allowed) into files.

    Files inside a directory that look binary or cannot be read are skipped (a source
    tree holds images too, a system directory files only root may read); a file named
    explicitly or matched by a glob must be readable text.
    """
    files: list[Path] = []
    binary: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    for spec in specs:
        spec = str(spec)
        path = Path(spec).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            text = []
            for found in _walk(path):
                why = _sniff(found)
                if why is None:
                    text.append(found)
                elif why == "binary":
                    binary.append(found)
                else:
                    unreadable.append((found, why))
            if not text:
                raise CorpusError(f"{spec}: directory holds no text files")
            files += text
        elif glob.has_magic(spec):
            matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
            matched = [p for p in matched if p.is_file()]
            if not matched:
                raise CorpusError(f"{spec}: pattern matches no files")
            files += matched
        elif path.is_symlink():
            raise CorpusError(f"{spec}: dangling link")
        elif path.exists():
            raise CorpusError(f"{spec}: not a regular file or directory")
        else:
            raise CorpusError(f"{spec}: no such file or directory")
    unique = tuple(dict.fromkeys(p.resolve() for p in files))
    return Sources(files=unique, skipped_binary=tuple(sorted(binary)), skipped_unreadable=tuple(unreadable))


def codec_name(encoding: str) -> str:
    """The canonical name of a text encoding; `CorpusError` if Python knows no such codec."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise CorpusError(f"unknown text encoding {encoding!r}; use a Python codec name such as utf-8 or latin-1") from None


def fingerprint(sources: Sources, encoding: str, separator: str) -> str:
    """SHA-256 over the raw bytes of every document, their boundaries and how they are
    decoded and joined: equal fingerprints mean the same corpus text."""
    h = hashlib.sha256()
    h.update(f"charnet-corpus-v1\0{codec_name(encoding)}\0{separator}\0".encode("utf-8", "surrogatepass"))
    for path in sources.files:
        try:
            h.update(f"\0{os.path.getsize(path)}\0".encode())
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    h.update(chunk)
        except OSError as e:
            raise CorpusError(f"{path}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()


def _decode_file(path: Path, encoding: str) -> Iterator[str]:
    """Yield the text of one file in chunks; raise `CorpusError` naming the byte offset
    of the first byte that is NUL (binary) or cannot be decoded."""
    utf8 = codec_name(encoding) == "utf-8"
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK_BYTES)
            final = not chunk
            if utf8:
                if offset == 0 and chunk.startswith(_BOM):
                    chunk, offset = chunk[len(_BOM):], len(_BOM)
                nul = chunk.find(b"\0")
                if nul >= 0:
                    raise CorpusError(f"{path}: binary file (NUL byte at offset {offset + nul}); give text files")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=final)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                raise CorpusError(
                    f"{path}: not valid {encoding} at byte offset {at} ({e.reason}); "
                    "pass --encoding if the file uses another encoding"
                ) from None
            if text:
                yield text
            if final:
                return
            offset += len(chunk)


def iter_text(sources: Sources, encoding: str = "utf-8", separator: str = DEFAULT_SEPARATOR) -> Iterator[str]:
    """The corpus text in chunks of at most a few MB: documents joined by `separator`."""
    for n, path in enumerate(sources.files):
        if n:
            yield separator
        try:
            yield from _decode_file(path, encoding)
        except OSError as e:
            raise CorpusError(f"{path}: cannot read ({e.strerror or e})") from None


def read_text(paths: list[str] | list[Path], encoding: str = "utf-8", separator: str = DEFAULT_SEPARATOR) -> str:
    """The whole text of a (small) corpus as one string."""
    return "".join(iter_text(resolve_sources(paths), encoding, separator))
