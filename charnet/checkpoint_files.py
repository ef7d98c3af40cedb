"""Reading a checkpoint's files without trusting them.

A checkpoint may come from anyone. Every file is read under a size cap, JSON of any type
or nesting is one `CheckpointError` naming the file and the field, the model's shape is
checked against `ModelConfig`'s caps and then against the safetensors header (shapes and
dtypes, read without loading a tensor) before anything is allocated, and weights that
are not finite are refused rather than served as garbage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from charnet.config import ModelConfig
from charnet.errors import CheckpointError, ConfigError
from charnet.model import CharRNN

MAX_CONFIG_BYTES = 1 << 20
"""Largest config.json read (a real one is a few kilobytes)."""

MAX_TOKENIZER_BYTES = 64 << 20
"""Largest tokenizer.json read (every Unicode code point takes about 30 MB)."""

STORED_DTYPES = {"F32", "BF16", "F16"}

_SECTIONS = {"model": dict, "tokenizer": dict, "files": dict, "metrics": dict, "training": dict, "corpus": dict,
             "dtype": str, "charnet_version": str, "created": str}
"""config.json's fields beyond format and format_version, and what each must be."""


def read_json(path: Path, limit: int) -> Any:
    """The JSON value in `path`, at most `limit` bytes."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise CheckpointError(f"{path}: {size:,} bytes, larger than such a file may be ({limit:,})")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None


def _kind(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
                                         int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def check_config(path: Path, config: Any, format_name: str) -> None:
    """`CheckpointError` naming the field unless config.json has the shape charnet reads."""
    if not isinstance(config, dict) or config.get("format") != format_name:
        raise CheckpointError(f"{path}: not a charnet checkpoint config")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: corrupt (format_version must be an integer, got {_kind(version)})")
    for key, kind in _SECTIONS.items():
        if key in config and not isinstance(config[key], kind):
            raise CheckpointError(f"{path}: corrupt ({key} must be {_kind(kind())}, got {_kind(config[key])})")
    if "model" not in config:
        raise CheckpointError(f"{path}: corrupt (no model section)")
    for name, digest in config.get("files", {}).items():
        if not isinstance(digest, str):
            raise CheckpointError(f"{path}: corrupt (files.{name} must be a string, got {_kind(digest)})")


def model_config(path: Path, section: dict[str, Any]) -> ModelConfig:
    """The model section as a validated `ModelConfig` (its caps included)."""
    try:
        return ModelConfig.from_dict(section)
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid model setting {e}") from None
    except TypeError as e:
        raise CheckpointError(f"{path}: corrupt (bad model section: {e})") from None


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every stored tensor of a model of this shape, computed on the meta
    device: nothing is allocated, however large the config says the model is."""
    with torch.device("meta"):
        model = CharRNN(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        shapes.pop("head.weight")  # stored once, as embed.weight
    return shapes


def check_header(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """The weights file's header names exactly the tensors `shapes` lists, with those
    shapes, in a dtype charnet stores: checked before any tensor is read."""
    try:
        with safe_open(path, framework="pt") as f:
            found = {name: f.get_slice(name) for name in f.keys()}
            header = {name: (tuple(s.get_shape()), s.get_dtype()) for name, s in found.items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt ({e})") from None
    if set(header) != set(shapes):
        odd = sorted(set(shapes) - set(header)) or sorted(set(header) - set(shapes))
        raise CheckpointError(f"{path}: does not match config.json (tensor {odd[0]!r})")
    for name, (shape, dtype) in header.items():
        if shape != shapes[name]:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {shape}, config.json implies {shapes[name]}")
        if dtype not in STORED_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} is stored as {dtype}; charnet stores F32, BF16 or F16")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file whose header `check_header` passed, as float32;
    `CheckpointError` if any holds a NaN or an infinity."""
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt ({e})") from None
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return {k: v.float() for k, v in tensors.items()}
