"""Novelty: line items sorted into train / validation / new, and running text measured
against a suffix array of the corpus; both indexes built once and cached."""

from __future__ import annotations

import pytest

from charnet.documents import text_lines, validation_lines
from charnet.inference.novelty import RUN, Novelty
from tests.conftest import cli


@pytest.fixture
def line_corpus(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("".join(f"item{i:03d}\n" for i in range(200)), encoding="utf-8")
    return path


def test_line_items_are_train_validation_or_new(line_corpus):
    lines = text_lines(line_corpus.read_text())
    held = validation_lines(len(lines), 0.1)
    train = [line for line, h in zip(lines, held) if not h]
    val = [line for line, h in zip(lines, held) if h]
    assert len(val) == 20
    index = Novelty([line_corpus], documents="lines", val_fraction=0.1)
    report = index.check([train[0], f"{val[0]}\n{train[5]}\n\nitem999", "itemx\r\n"])
    assert report.items == [(train[0], "train"), (val[0], "validation"), (train[5], "train"), ("item999", "new"),
                            ("itemx", "new")]
    assert report.counts == {"train": 2, "validation": 1, "new": 2}
    assert report.fractions == {"train": 0.4, "validation": 0.2, "new": 0.4}
    assert (index.folder / "lines-0.1.npz").exists()
    # A second index of the same corpus reads the cached file.
    again = Novelty([line_corpus], documents="lines", val_fraction=0.1)
    assert again.check(["item999", train[1]]).counts == {"train": 1, "validation": 0, "new": 1}


def longest_shared(sample: str, text: str) -> tuple[int, str]:
    """The longest substring of `sample` in `text` (the first of the longest), by brute force."""
    best = (0, "")
    for i in range(len(sample)):
        for j in range(len(sample), i + best[0], -1):
            if sample[i:j] in text:
                best = (j - i, sample[i:j])
                break
    return best


def test_running_text_longest_shared_substring_and_copied_share(tmp_path, monkeypatch):
    corpus = tmp_path / "text.txt"
    body = "the quick brown fox jumps over the lazy dog. Ünïcode ☃ snowmen are here to stay, 漢字も。"
    corpus.write_text(body * 3, encoding="utf-8")
    index = Novelty([corpus])
    copied = "zz" + body[10:50] + "qq"
    fresh = "xyzzy plugh"
    report = index.check([copied, fresh, body[60:], ""])
    m = report.matches
    assert (m[0].longest, m[0].longest_text) == longest_shared(copied, body * 3)
    assert m[0].longest >= 40 and m[0].shared_fraction == pytest.approx(m[0].longest / len(copied))
    assert (m[1].longest, m[1].longest_text) == longest_shared(fresh, body * 3)
    assert m[1].longest < RUN and m[1].shared_fraction == 0
    assert m[2].longest == len(body) - 60 and m[2].shared_fraction == 1.0  # multi-byte characters counted as characters
    assert m[3].longest == 0
    assert report.to_dict()["samples"][2]["longest"] == len(body) - 60
    # The suffix array is built once: a new index of the same corpus never rebuilds it.
    import pydivsufsort

    monkeypatch.setattr(pydivsufsort, "divsufsort", lambda data: pytest.fail("rebuilt the suffix array"))
    assert Novelty([corpus]).check([copied]).matches == [m[0]]


def test_sample_novelty_from_the_cli(capsys, tiny_model, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("To be, or not to be, that is the question.\n", encoding="utf-8")
    result = cli(capsys, "sample", tiny_model, "-p", "To be, or not to be", "-n", "30", "--seed", "1",
                 "--novelty", corpus)
    assert result.returncode == 0, result.stderr
    assert "--- novelty ---" in result.stdout and "longest substring shared with the corpus" in result.stdout
    bad = cli(capsys, "sample", tiny_model, "--novelty", tmp_path / "missing.txt")
    assert bad.returncode == 2 and "missing.txt" in bad.stderr
