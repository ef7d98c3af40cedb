"""Errors a user can act on.

Anything raised as a `CharnetError` is the user's to fix (a bad path, a bad value, a
damaged file); the CLI prints its message as one line on stderr and exits with code 2,
and the server turns it into a 4xx. Every other exception is a bug in charnet.
"""

from __future__ import annotations


class CharnetError(Exception):
    """A problem with the input, described in one line that names what to fix."""


class ConfigError(CharnetError, ValueError):
    """An option or field holds an invalid value.

    `field` is the dataclass field's name; front ends translate it into their own
    spelling (``--seq-len`` on the command line, ``seq_len`` in JSON).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class CorpusError(CharnetError):
    """A corpus path is missing, empty, binary, undecodable or too short."""


class CheckpointError(CharnetError):
    """A checkpoint is missing, damaged, of a newer format, or cannot be written."""


class PeerFailed(CharnetError):
    """Another process of a distributed run failed (and reported why itself); this one
    stops too, without repeating the message."""
