"""`charnet export`: a checkpoint ready to ship: a smaller checkpoint, an ONNX graph, or a web page."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charnet.cli import app
from charnet.errors import CharnetError


class Format(str, Enum):
    checkpoint = "checkpoint"
    onnx = "onnx"
    web = "web"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory, run directory (its best/), or name.")],
    out: Annotated[Path, typer.Argument(help="Directory to write the export to.")],
    format: Annotated[Format, typer.Option(
        "--format", help="checkpoint: a charnet checkpoint for serving and sharing; onnx: model.onnx (one step, "
                         "dynamic batch), tokenizer.json and charnet.json, for any ONNX runtime; web: a static "
                         "folder whose page generates in the browser with onnxruntime-web. onnx and web need "
                         "pip install 'charnet[onnx]'.")] = Format.checkpoint,
    dtype: Annotated[Optional[Dtype], typer.Option(
        help="Dtype the weights are stored in. checkpoint: bfloat16 (the default) halves the size and keeps the "
             "loss within about 1e-5 nats/char. onnx and web: float32 (the default) or float16, cast to float32 "
             "where used.", show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing export at OUT.")] = False,
) -> None:
    """Write a checkpoint for shipping: a smaller checkpoint, an ONNX graph, or a page that runs it in a browser."""
    from charnet.checkpoint import CONFIG, find, load_checkpoint

    weights = (dtype or (Dtype.bfloat16 if format is Format.checkpoint else Dtype.float32)).value
    if format is not Format.checkpoint and weights == "bfloat16":
        raise CharnetError("--dtype: ONNX exports store float32 or float16 weights; bfloat16 is for checkpoints")
    if format is not Format.checkpoint:
        from charnet.export.onnx import EXPORTER, require

        require(*EXPORTER)  # before anything is loaded or written
    source = load_checkpoint(find(checkpoint))
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        held = "a checkpoint" if (out / CONFIG).exists() else "other files"
        raise CharnetError(f"{out}: already holds {held}; pass --force to replace it")
    if format is Format.checkpoint:
        _checkpoint(source, out, weights)
        return
    from charnet.export.onnx import export_onnx
    from charnet.export.web import export_web, folder_size

    manifest = (export_onnx if format is Format.onnx else export_web)(source, out, weights)
    size = folder_size(out) / 1e6
    print(f"wrote {out}: {manifest.cell} {manifest.layers}x{manifest.hidden}, weights in {weights}, {size:.1f} MB")
    if format is Format.web:
        print(f"serve it from any static host, e.g.: python -m http.server -d {out}")


def _checkpoint(source, out: Path, weights: str) -> None:
    from charnet.checkpoint import DTYPES, save_checkpoint
    from charnet.export.web import folder_size

    keep = {k: v for k, v in source.config.items()
            if k not in ("format", "format_version", "charnet_version", "model", "dtype", "tokenizer", "files")}
    keep["exported_from"] = {"path": str(source.path), "dtype": source.config.get("dtype")}
    save_checkpoint(out, source.model, source.vocab, keep, dtype=DTYPES[weights])
    print(f"wrote {out}: weights in {weights}, {folder_size(out) / 1e6:.1f} MB")
