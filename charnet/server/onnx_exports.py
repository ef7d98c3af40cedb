"""The ONNX export of a served model, for the playground's "run in this browser".

A model's export is the folder ``<checkpoint>/onnx`` when it holds one of these very
weights (``charnet export CKPT CKPT/onnx --format onnx``); otherwise, when the server
has the onnx extra, one it makes on first request into the charnet cache (keyed by the
weights' SHA-256, so a retrained checkpoint gets a new one). The page then generates
with onnxruntime-web: the server only hands out three static files.
"""

from __future__ import annotations

import threading
from pathlib import Path

from charnet.checkpoint import TOKENIZER, WEIGHTS, Checkpoint
from charnet.corpus import cache_dir
from charnet.errors import CharnetError
from charnet.export.manifest import MANIFEST, ONNX_MODEL, Manifest
from charnet.export.onnx import EXPORTER, export_onnx, missing

FILES = {MANIFEST: "application/json", ONNX_MODEL: "application/octet-stream", TOKENIZER: "application/json"}
"""The files of an export the server hands out, with their media types."""


def can_export() -> bool:
    """Whether this server has what it takes to make an export (the onnx extra)."""
    return not missing(*EXPORTER)


class OnnxExport:
    """Where one served model's ONNX export lies, found or made once."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.weights = (checkpoint.config.get("files") or {}).get(WEIGHTS)
        self.beside = checkpoint.path / "onnx"
        self._folder: Path | None = None
        self._lock = threading.Lock()

    def _matches(self, folder: Path) -> bool:
        if not (folder / MANIFEST).is_file():
            return False
        try:
            return Manifest.read(folder).source.get("weights_sha256") == self.weights
        except CharnetError:
            return False

    @property
    def available(self) -> bool:
        """Whether `folder` can give one (without making it)."""
        return self._folder is not None or can_export() or self._matches(self.beside)

    def folder(self) -> Path | None:
        """The export's folder, made now if need be (seconds: call it off the event
        loop); None when there is none and this server cannot make one."""
        with self._lock:
            if self._folder is None:
                if self._matches(self.beside):
                    self._folder = self.beside
                elif can_export() and self.weights:
                    made = cache_dir() / "onnx" / self.weights[:32]
                    if not self._matches(made):
                        try:
                            export_onnx(self.checkpoint, made)
                        except CharnetError:
                            # Another replica may have swapped its own copy in meanwhile.
                            if not self._matches(made):
                                raise
                    self._folder = made
            return self._folder
