"""`charnet eval` and `charnet info`: what a checkpoint is and how well it predicts text."""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from charnet.cli import app
from charnet.cli.train import Device


@app.command("eval")
def eval_(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory, run directory, or name under checkpoints/.")],
    files: Annotated[list[str], typer.Argument(help="Text files, directories or globs to score; each file is "
                                                    "scored as one document from the model's initial state.")],
    encoding: Annotated[str, typer.Option(help="Text encoding of the files.")] = "utf-8",
    device: Annotated[Device, typer.Option(help="Device to run the model on.")] = Device.cpu,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Bits per character and perplexity of text under a model."""
    from charnet.inference.engine import load
    from charnet.corpus import read_text, resolve_sources
    from charnet.units import LN2

    engine = load(checkpoint, device.value)
    ckpt = engine.checkpoint
    unit = "byte" if ckpt.vocab.kind == "byte" else "char"
    rows, total_nats, total_tokens, total_unknown = [], 0.0, 0, 0
    for path in resolve_sources(files).files:
        score = engine.score(read_text([path], encoding))
        rows.append({"file": str(path), "tokens": score.tokens, f"bits_per_{unit}": score.bits_per_char,
                     f"nats_per_{unit}": score.nats, "perplexity": score.perplexity, "unknown": score.unknown})
        total_nats += -float(score.logprobs.astype("float64").sum())
        total_tokens += score.tokens
        total_unknown += score.unknown
    nats = total_nats / total_tokens if total_tokens else float("nan")
    total = {"file": "total", "tokens": total_tokens, f"bits_per_{unit}": nats / LN2, f"nats_per_{unit}": nats,
             "perplexity": math.exp(nats) if total_tokens else float("nan"), "unknown": total_unknown}
    if as_json:
        print(json.dumps({"checkpoint": str(ckpt.path), "files": rows, "total": total}, indent=2))
    else:
        table = Table(title=f"{ckpt.path}")
        for col in ("file", f"{unit}s scored", f"bits/{unit}", f"nats/{unit}", "perplexity", "unknown"):
            table.add_column(col, justify="left" if col == "file" else "right")
        for r in [*rows, total] if len(rows) > 1 else rows:
            table.add_row(r["file"], f"{r['tokens']:,}", f"{r[f'bits_per_{unit}']:.4f}", f"{r[f'nats_per_{unit}']:.4f}",
                          f"{r['perplexity']:.3f}", f"{r['unknown']:,}")
        Console().print(table)
    if total_unknown:
        print(f"note: {total_unknown:,} characters were not in the model's vocabulary and were scored as unknown",
              file=sys.stderr)


LINEAGE_SHOWN = 8
"""Ancestors `charnet info` lists (``--json`` has them all)."""

VOCAB_SHOWN = 128
"""Token ids `charnet info` shows in its table (``--json`` lists every one)."""


@app.command()
def info(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory, run directory, or name under checkpoints/.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """Configuration, size, vocabulary and training metrics of a checkpoint."""
    from charnet.checkpoint import find, load_checkpoint

    ckpt = load_checkpoint(find(checkpoint))
    cfg, model = ckpt.config, ckpt.model
    summary = {
        "path": str(ckpt.path),
        "parameters": model.num_parameters(),
        "vocab_size": ckpt.vocab.size,
        "tokenizer": ckpt.vocab.kind,
        "vocabulary": ckpt.vocab.listing(),
        **{k: cfg.get(k) for k in ("format_version", "charnet_version", "created", "dtype", "model", "training",
                                   "corpus", "parent", "metrics")},
    }
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    m = model.config
    table = Table(show_header=False, title=str(ckpt.path))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", f"{m.cell}, {m.layers} x {m.hidden} hidden, embedding {m.embedding}, "
                           f"dropout {m.dropout}{', tied embeddings' if m.tie_embeddings else ''}")
    table.add_row("parameters", f"{summary['parameters']:,} (stored as {cfg.get('dtype', '?')})")
    table.add_row("vocabulary", f"{ckpt.vocab.size} ({ckpt.vocab.kind})")
    shown = [f"{i}:{t!r}" for i, t in enumerate(summary["vocabulary"][:VOCAB_SHOWN])]
    more = len(summary["vocabulary"]) - VOCAB_SHOWN
    table.add_row("token ids", "  ".join(shown) + (f"  … {more:,} more (--json lists all)" if more > 0 else ""))
    corpus = cfg.get("corpus") or {}
    if corpus:
        chars = corpus.get("chars")
        size = f"{chars:,}" if isinstance(chars, int) else "?"
        table.add_row("corpus", f"{size} characters in {corpus.get('files', '?')} file(s), "
                                f"sha256 {str(corpus.get('sha256'))[:16]}…")
    lineage = _lineage(cfg.get("parent"))
    if lineage:
        table.add_row("fine-tuned from", lineage)
    for key, value in (cfg.get("metrics") or {}).items():
        if value is not None:
            table.add_row(key.replace("_", " "), f"{value:.4f}" if isinstance(value, float) else str(value))
    training = cfg.get("training") or {}
    if training:
        table.add_row("training", ", ".join(f"{k}={v}" for k, v in training.items() if v is not None))
    table.add_row("format", f"{cfg.get('format_version')} (charnet {cfg.get('charnet_version', '?')}), "
                            f"created {cfg.get('created', '?')}")
    Console().print(table)



def _lineage(parent, depth: int = 0) -> str:
    """The chain of parents config.json records, nearest first, one line each."""
    if not isinstance(parent, dict) or depth >= LINEAGE_SHOWN:
        return ""
    sha, added = str(parent.get("weights_sha256") or "?")[:16], parent.get("added_chars") or []
    line = (f"{parent.get('checkpoint', '?')} ({parent.get('path', '?')}, step {parent.get('step', '?')}, "
            f"weights sha256 {sha}…), {len(added)} characters added" + (f": {' '.join(map(repr, added[:20]))}" if added else ""))
    rest = _lineage(parent.get("parent"), depth + 1)
    return line + (f"\n← {rest}" if rest else "")
