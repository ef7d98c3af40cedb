"""``charnet.json``: what a runtime outside Python needs to drive an exported step.

The manifest names the cell, the shapes, the state tensors in the order the graph takes
them, the vocabulary (every token by id), what an empty prompt starts from, and the
SHA-256 of every file beside it; `Manifest.read` refuses a folder whose files do not
match. The browser page (`charnet/export/web/`) reads the same file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charnet import __version__
from charnet.checkpoint import sha256_file
from charnet.errors import CheckpointError

MANIFEST = "charnet.json"
ONNX_MODEL = "model.onnx"
FORMAT = "charnet-onnx"
FORMAT_VERSION = 1


@dataclass(kw_only=True)
class Manifest:
    """An exported model's description (the module docstring says what it is for)."""

    cell: str
    """``rnn``, ``lstm``, ``peephole`` or ``gru``: which equations the graph computes."""

    layers: int
    """Stacked recurrent layers: the first dimension of every state tensor."""

    hidden: int
    """Units per layer: the last dimension of every state tensor."""

    vocab_size: int
    """Token ids 0..vocab_size-1: the `tokens` input's range and the logits' width."""

    state: list[str]
    """The state tensors, each (layers, batch, hidden) float32, in the order the graph
    takes them after `tokens`; the graph returns them in the same order, named
    ``<name>_out``, after `logits`."""

    vocab_kind: str
    """``char`` (one token per character) or ``byte`` (one per UTF-8 byte)."""

    tokens: list[str]
    """Every token by id: its character (char), or its byte value as a one-character
    string of that code point (byte)."""

    unk_id: int | None
    """The id unknown characters map to, which generation never writes (None for bytes)."""

    document_start: str
    """What an empty prompt primes the model with (``\\n`` for a line model)."""

    dtype: str
    """How the weights are stored in the graph: ``float32``, or ``float16`` (cast to
    float32 where used, so the arithmetic is float32 either way)."""

    files: dict[str, str] = field(default_factory=dict)
    """SHA-256 of each file of the folder by name (the manifest itself excepted)."""

    source: dict[str, Any] = field(default_factory=dict)
    """The checkpoint it was exported from: its path and the SHA-256 of its weights."""

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    charnet_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """The manifest of an exported folder, its files' checksums verified."""
        path = Path(directory) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            manifest = cls(**data)
        except FileNotFoundError:
            raise CheckpointError(f"{directory}: no {MANIFEST}; not an ONNX export of charnet") from None
        except (OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: not a charnet ONNX manifest ({e})") from None
        if manifest.format != FORMAT or manifest.format_version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: format {manifest.format} v{manifest.format_version} is not one this "
                                  f"charnet reads ({FORMAT} v{FORMAT_VERSION})")
        for name, digest in manifest.files.items():
            file = Path(directory) / name
            if not file.is_file():
                raise CheckpointError(f"{file}: missing (the manifest lists it)")
            if sha256_file(file) != digest:
                raise CheckpointError(f"{file}: SHA-256 does not match the manifest; the export is damaged")
        return manifest
