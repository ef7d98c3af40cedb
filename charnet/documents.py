"""What a document of a corpus is, shared by training and by the novelty check.

With ``documents="files"`` (the default) a corpus is running text: its files joined by a
separator, read as contiguous streams. With ``documents="lines"`` every non-empty line
is one document (a name, a title, a tweet): training feeds each one from the zero state
after `LINE_BREAK`, and teaches the model to end it with `LINE_BREAK`, so sampling from
an empty prompt with ``stop="\\n"`` writes one new item. The validation split of a line
corpus is a fixed pseudo-random choice of its documents (`validation_lines`), the same
wherever it is computed.
"""

from __future__ import annotations

import numpy as np

DOCUMENTS = ("files", "lines")

LINE_BREAK = "\n"
"""Ends a line document, and (fed from the zero state) starts one: what an empty
prompt primes a line model with."""

DEFAULT_START = "\n\n"
"""The start of a running-text document when its separator is empty (and of every
checkpoint that recorded none): the blank line `charnet train` puts between files."""

SPLIT_SEED = 20_261_201
"""Seeds the choice of validation lines: fixed, so that a run, its resumption and a
novelty check of its samples all hold out the same lines whatever the training seed."""


def text_lines(text: str) -> list[str]:
    """The documents of a line corpus: its non-empty lines, a CR before the line feed
    dropped (files with Windows line ends hold the same documents)."""
    lines = (line[:-1] if line.endswith("\r") else line for line in text.split(LINE_BREAK))
    return [line for line in lines if line]


def validation_lines(count: int, val_fraction: float) -> np.ndarray:
    """Which of `count` documents (in corpus order) are held out for validation: a
    boolean mask with ``int(count * val_fraction)`` of them set, chosen at random by
    `SPLIT_SEED` (a line corpus is often sorted, so its last lines are no fair sample)."""
    held = np.zeros(count, dtype=bool)
    held[np.random.default_rng(SPLIT_SEED).permutation(count)[: int(count * val_fraction)]] = True
    return held


def document_start(documents: str, separator: str) -> str:
    """What a new document of a corpus read this way starts after: the line break for
    line documents, the separator between files for running text. An empty prompt
    primes a model with it (recorded as ``corpus.document_start`` in config.json)."""
    return LINE_BREAK if documents == "lines" else separator or DEFAULT_START
