"""Starting a run from a trained model (``charnet train --init-from``).

The new run takes the parent's shape, weights and vocabulary. Characters of the new
corpus the vocabulary lacks are appended to it (`charnet.tokenizer.Vocab.extended`):
every old id keeps its character and its rows, bit for bit. The parent read those
characters as its unknown character, so each new row starts as a copy of the unknown
character's: its embedding row, its output row, and its output bias lowered by
log(k + 1) for k new characters (the unknown id's too). The grown model then predicts
exactly what its parent did, the parent's unknown-character probability shared evenly
between the unknown id and the new characters, and training moves on from there.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from charnet.checkpoint import Checkpoint
from charnet.config import ModelConfig
from charnet.model import CharRNN
from charnet.tokenizer import Vocab

VOCAB_ROWS = ("embed.weight", "head.weight", "head.bias")
"""The parameters with one row per token id."""


def grow(parent: CharRNN, vocab_size: int, unk_id: int | None, dropout: float) -> CharRNN:
    """A new model of the parent's shape with `vocab_size` token ids (at least the
    parent's) and `dropout`, holding the parent's weights; new rows as the module
    docstring describes."""
    old = parent.config.vocab_size
    added = vocab_size - old
    if added < 0 or (added and unk_id is None):
        raise ValueError("a vocabulary only grows, and only one with an unknown id")
    model = CharRNN(dataclasses.replace(parent.config, vocab_size=vocab_size, dropout=dropout))
    source = parent.state_dict()
    shift = math.log(added + 1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name not in VOCAB_ROWS or not added:
                tensor.copy_(source[name])
                continue
            tensor[:old] = source[name]
            tensor[old:] = source[name][unk_id]
            if name == "head.bias":
                tensor[old:] -= shift
                tensor[unk_id] -= shift
    return model


def lineage(parent: Checkpoint, spec: str, added: list[str]) -> dict:
    """What config.json records of the run's parent (``parent``): how it was named,
    where it was, the SHA-256 of its weights, the characters this run added to its
    vocabulary, and the parent's own parent, if any."""
    record = {"checkpoint": spec, "path": str(parent.path),
              "weights_sha256": parent.config.get("files", {}).get("model.safetensors"),
              "step": parent.metrics.get("step"), "vocab_size": parent.vocab.size, "added_chars": added}
    if isinstance(parent.config.get("parent"), dict):
        record["parent"] = parent.config["parent"]
    return record


def shape_conflicts(parent: ModelConfig, vocab: Vocab, given: dict[str, object]) -> list[tuple[str, object, object]]:
    """(option, given, parent's) for each given shape option that contradicts the parent:
    the cell, layers, widths, tied embeddings and the tokenizer kind are the parent's."""
    own = {"model": parent.cell, "layers": parent.layers, "hidden": parent.hidden, "embedding": parent.embedding,
           "tie_embeddings": parent.tie_embeddings, "tokenizer": vocab.kind}
    return [(name, value, own[name]) for name, value in given.items() if name in own and value != own[name]]
