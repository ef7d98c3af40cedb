"""Finding and decoding corpora: files, directories, globs, encodings, bad files."""

from __future__ import annotations

import pytest

from charnet import corpus as corpus_mod
from charnet.corpus import DEFAULT_SEPARATOR, iter_text, read_text, resolve_sources
from charnet.errors import CorpusError
from tests.conftest import UNICODE_TEXT


def make_tree(root):
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "a.py").write_text("print('a')\n")
    (root / "src" / "pkg" / "b.py").write_text("print('b')\n")
    (root / "src" / "pkg" / "notes.md").write_text("# notes\n")
    (root / "src" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (root / "src" / ".hidden").mkdir()
    (root / "src" / ".hidden" / "secret.py").write_text("no\n")
    return root / "src"


def test_directory_is_read_recursively_in_order_skipping_binary_and_hidden(tmp_path):
    src = make_tree(tmp_path)
    sources = resolve_sources([src])
    assert [p.name for p in sources.files] == ["a.py", "b.py", "notes.md"]
    assert [p.name for p in sources.skipped_binary] == ["logo.png"]


def test_glob_with_double_star(tmp_path):
    src = make_tree(tmp_path)
    sources = resolve_sources([f"{src}/**/*.py"])
    assert [p.name for p in sources.files] == ["a.py", "b.py"]
    text = read_text([f"{src}/**/*.py"])
    assert text == "print('a')\n" + DEFAULT_SEPARATOR + "print('b')\n"


def test_files_keep_argument_order_and_are_not_repeated(tmp_path):
    src = make_tree(tmp_path)
    sources = resolve_sources([src / "pkg" / "b.py", src, src / "a.py"])
    assert [p.name for p in sources.files] == ["b.py", "a.py", "notes.md"]


@pytest.mark.parametrize("spec, message", [
    ("missing.txt", "no such file or directory"),
    ("nothing/*.txt", "pattern matches no files"),
])
def test_bad_specs(tmp_path, spec, message):
    with pytest.raises(CorpusError, match=message):
        resolve_sources([str(tmp_path / spec)])


def test_directory_without_text_files(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.bin").write_bytes(b"\0\1\2")
    with pytest.raises(CorpusError, match="no text files"):
        resolve_sources([tmp_path / "bin"])


def test_unicode_and_crlf_survive(unicode_corpus):
    assert read_text([unicode_corpus]) == UNICODE_TEXT * 40


def test_utf8_bom_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello")
    assert read_text([path]) == "hello"


def test_binary_file_names_file_and_offset(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"hello\0world")
    with pytest.raises(CorpusError, match=r"data.txt: binary file \(NUL byte at offset 5\)"):
        read_text([path])


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("naïve café".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin.txt: not valid utf-8 at byte offset 2"):
        read_text([path])
    assert read_text([path], encoding="latin-1") == "naïve café"


def test_decoding_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "CHUNK_BYTES", 7)  # splits multi-byte characters
    path = tmp_path / "u.txt"
    path.write_text(UNICODE_TEXT, encoding="utf-8")
    assert "".join(iter_text(resolve_sources([path]))) == UNICODE_TEXT
    bad = UNICODE_TEXT.encode("utf-8") + b"ok\xff"
    path.write_bytes(bad)
    with pytest.raises(CorpusError, match=f"byte offset {len(bad) - 1} "):
        read_text([path])


def test_unknown_encoding(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("x")
    with pytest.raises(CorpusError, match="unknown text encoding"):
        read_text([path], encoding="klingon")


def test_unreadable_entries_of_a_directory_are_skipped_and_named(tmp_path):
    """A system directory holds dangling links, FIFOs and files only root may read: each
    is skipped and named (a FIFO would block a reader forever), the text still trains."""
    import os

    src = make_tree(tmp_path)
    (src / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    os.mkfifo(src / "pipe")
    locked = src / "locked.txt"
    locked.write_text("secret\n")
    locked.chmod(0)
    sources = resolve_sources([src])
    assert [p.name for p in sources.files if p.name != "locked.txt"] == ["a.py", "b.py", "notes.md"]
    skipped = {p.name: why for p, why in sources.skipped_unreadable}
    assert skipped["gone.txt"] == "dangling link" and skipped["pipe"] == "not a regular file"
    if os.geteuid() != 0:  # root reads anything
        assert skipped["locked.txt"].startswith("cannot read")
    assert "print('a')" in "".join(iter_text(sources))


def test_a_named_dangling_link_is_one_clear_error(tmp_path):
    link = tmp_path / "corpus.txt"
    link.symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(CorpusError, match="dangling link"):
        resolve_sources([link])
