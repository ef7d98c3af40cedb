"""`charnet export --format onnx`: a checkpoint as one ONNX step graph.

The folder holds ``model.onnx`` (`charnet.export.step.OnnxStep`, exported by torch's
ONNX exporter with a dynamic batch dimension and checked by ``onnx.checker``), the
checkpoint's ``tokenizer.json``, and ``charnet.json`` (`charnet.export.manifest`).
``onnx`` and ``onnxscript`` (torch's exporter needs both) come with the ``onnx`` extra;
without them the export names the extra to install.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import torch

from charnet.checkpoint import TOKENIZER, WEIGHTS, Checkpoint, atomic_directory, sha256_file
from charnet.errors import CharnetError
from charnet.export.manifest import MANIFEST, ONNX_MODEL, Manifest
from charnet.export.step import STATE_NAMES, OnnxStep

EXTRA = "pip install 'charnet[onnx]'"
DTYPES = {"float32": torch.float32, "float16": torch.float16}

EXPORTER = ("onnx", "onnxscript")
"""What torch's ONNX exporter needs besides torch."""


def missing(*modules: str) -> list[str]:
    """Those of `modules` that are not installed."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(*modules: str) -> None:
    """Raise a one-line `CharnetError` naming the extra if any of `modules` is missing."""
    if absent := missing(*modules):
        raise CharnetError(f"ONNX support needs {' and '.join(absent)}, which charnet's onnx extra installs: {EXTRA}")


def write_onnx(checkpoint: Checkpoint, directory: Path, dtype: str = "float32") -> Manifest:
    """Write model.onnx, tokenizer.json and charnet.json of `checkpoint` into the
    existing `directory`; return the manifest."""
    require(*EXPORTER)
    import onnx

    cfg = checkpoint.model.config
    names = list(STATE_NAMES[cfg.cell])
    step = OnnxStep(checkpoint.model, DTYPES[dtype]).eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    example = (torch.zeros(2, dtype=torch.int64),) + tuple(torch.zeros(cfg.layers, 2, cfg.hidden) for _ in names)
    dynamic = {"tokens": {0: batch}, **{n: {1: batch} for n in names}}
    path = directory / ONNX_MODEL
    # The exporter reports every skipped operator family (torchvision's) and tracing
    # notes on the console; none of them concern this graph.
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [log.level for log in quiet]
    try:
        for log in quiet:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(step, example, input_names=["tokens", *names],
                                        output_names=["logits", *(f"{n}_out" for n in names)],
                                        dynamic_shapes=dynamic, dynamo=True, optimize=True,
                                        verbose=False)
            program.save(str(path))
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    onnx.checker.check_model(str(path), full_check=True)
    (directory / TOKENIZER).write_text(checkpoint.vocab.to_json(), encoding="utf-8")
    vocab = checkpoint.vocab
    manifest = Manifest(
        cell=cfg.cell, layers=cfg.layers, hidden=cfg.hidden, vocab_size=cfg.vocab_size, state=names,
        vocab_kind=vocab.kind, tokens=[vocab.piece(i) if vocab.kind == "char" else chr(i) for i in range(vocab.size)],
        unk_id=vocab.unk_id, document_start=checkpoint.document_start, dtype=dtype,
        files={name: sha256_file(directory / name) for name in (ONNX_MODEL, TOKENIZER)},
        source={"name": checkpoint.path.name, "path": str(checkpoint.path),
                "weights_sha256": (checkpoint.config.get("files") or {}).get(WEIGHTS)},
    )
    (directory / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def export_onnx(checkpoint: Checkpoint, out: Path, dtype: str = "float32") -> Manifest:
    """`write_onnx` into `out`, replacing it atomically."""
    with atomic_directory(out) as tmp:
        return write_onnx(checkpoint, tmp, dtype)
