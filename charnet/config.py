"""Configuration dataclasses: one docstring per field, validated on construction.

`ModelConfig` is stored in every checkpoint and is all it takes to rebuild the network;
`TrainConfig` records how a run was trained. Both reject bad values in
``__post_init__`` with a `ConfigError` naming the field, so the CLI, the Python API and
a checkpoint loaded from disk all get the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from charnet.documents import DOCUMENTS
from charnet.errors import ConfigError

CELLS = ("rnn", "lstm", "peephole", "gru")
MAX_SAMPLES = 16
"""Most samples the trainer writes at once (each costs a generation pass)."""
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16")

MAX_VOCAB = 0x110000
"""Largest vocabulary: every Unicode code point (the unknown id stands in for U+FFFD)."""

MAX_LAYERS = 64
MAX_WIDTH = 1 << 16
"""Caps on a model's shape, checked before anything is built from a config: a
checkpoint's config.json cannot ask for more (a larger model would not fit a machine's
memory anyway)."""

FINETUNE_LR = 5e-4
"""The peak learning rate of a run started from a trained model (``--init-from``) when
none is given: a quarter of training's default, so the first steps refine what the
model knows instead of overwriting it."""

DEFAULT_MAX_TIME = 10 * 60.0
"""Seconds `charnet train` runs for when given no --max-steps, --epochs or --max-time."""


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(name, f"must be a positive integer, got {value!r}")


def _choice(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class ModelConfig:
    """The shape of a character-level recurrent language model."""

    vocab_size: int
    """Number of token ids: characters seen in training plus the unknown id (char
    tokenizer), or 256 (byte tokenizer)."""

    cell: str = "gru"
    """Recurrent cell: ``rnn``, ``lstm``, ``peephole`` (LSTM with peephole connections,
    Gers & Schmidhuber 2000) or ``gru``. The default is the cell that reached the lowest
    validation loss in every `bench/quality.py` run (BENCHMARKS.md)."""

    layers: int = 2
    """Number of stacked recurrent layers, at most `MAX_LAYERS`."""

    hidden: int = 512
    """Units per recurrent layer (the size of h, and of C for the LSTMs), at most
    `MAX_WIDTH`."""

    embedding: int = 128
    """Size of the learned input embedding of each token, at most `MAX_WIDTH`."""

    dropout: float = 0.1
    """Dropout probability between recurrent layers and before the output layer (one
    mask per stream and window with `TrainConfig.locked_dropout`)."""

    tie_embeddings: bool = False
    """Share the input embedding matrix with the output layer's weights; needs
    ``embedding == hidden``."""

    def __post_init__(self) -> None:
        _choice(self, "cell", CELLS)
        _positive(self, "vocab_size", "layers", "hidden", "embedding")
        for name, cap in (("vocab_size", MAX_VOCAB), ("layers", MAX_LAYERS), ("hidden", MAX_WIDTH),
                          ("embedding", MAX_WIDTH)):
            if getattr(self, name) > cap:
                raise ConfigError(name, f"must be at most {cap}, got {getattr(self, name)}")
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError("tie_embeddings", f"must be true or false, got {self.tie_embeddings!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.tie_embeddings and self.embedding != self.hidden:
            raise ConfigError(
                "tie_embeddings",
                f"needs embedding == hidden (got embedding={self.embedding}, hidden={self.hidden})",
            )

    @property
    def state_tensors(self) -> int:
        """How many (layers, batch, hidden) tensors make up the recurrent state."""
        return 2 if self.cell in ("lstm", "peephole") else 1

    @property
    def state_bytes(self) -> int:
        """Bytes one sequence's float32 state takes (what a cached prompt costs)."""
        return self.state_tensors * self.layers * self.hidden * 4

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], "is not a model setting this charnet knows")
        return cls(**data)


@dataclass
class TrainConfig:
    """How to train: data, optimisation, budgets and bookkeeping."""

    seq_len: int = 128
    """Characters per truncated backpropagation-through-time window."""

    batch_size: int = 64
    """Parallel contiguous streams per step (per process when distributed)."""

    lr: float = 2e-3
    """Peak learning rate of AdamW, reached after warmup, then cosine-decayed
    (`FINETUNE_LR` is `charnet train --init-from`'s default)."""

    min_lr_ratio: float = 0.1
    """The cosine schedule ends at ``lr * min_lr_ratio``."""

    warmup_steps: int = 100
    """Steps of linear learning-rate warmup from zero."""

    weight_decay: float = 0.01
    """AdamW decoupled weight decay, applied to matrices only (not biases, embeddings
    or peephole vectors)."""

    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""

    max_steps: int | None = None
    """Stop after this many optimiser steps."""

    epochs: float | None = None
    """Stop after this many passes over the training split (fractions allowed)."""

    max_time: float | None = None
    """Stop after this many seconds of training (summed over resumed sessions).
    When no budget is given at all, training runs for `DEFAULT_MAX_TIME` seconds."""

    val_fraction: float = 0.1
    """Fraction of the corpus, taken from its end, held out for validation; 0 turns
    validation (and with it early stopping and the best checkpoint) off."""

    eval_every: int = 200
    """Evaluate on the validation split, and save the last checkpoint, every this many
    steps."""

    eval_chars: int = 250_000
    """Validation characters scored by each periodic evaluation (the first ones of the
    split); the evaluation at the end of training scores the whole split."""

    patience: int | None = None
    """Stop when this many evaluations in a row have not improved the best validation
    loss; None never stops early."""

    log_every: int = 10
    """Write a training-metrics line every this many steps."""

    seed: int = 1337
    """Seed for weight initialisation and dropout; the same seed on the same device
    gives the same losses."""

    device: str = "auto"
    """``auto`` (CUDA when present, else MPS, else CPU), ``cpu``, ``cuda`` or ``mps``."""

    compile: bool = False
    """Compile the model with torch.compile (needs a C++ compiler on CPU)."""

    precision: str = "auto"
    """Arithmetic of the forward and backward passes: ``bfloat16`` autocast (weights,
    optimizer and loss stay float32), ``float32``, or ``auto``: bfloat16 on CUDA,
    float32 elsewhere. On CPUs with native bf16 (AVX512-BF16, AMX) bfloat16 trains
    1.7-2x faster."""

    weight_drop: float = 0.0
    """DropConnect probability on each layer's hidden-to-hidden matrix (AWD-LSTM's
    weight drop, Merity et al. 2017): one mask per optimizer step, shared by every
    stream and time step, so the recurrence still runs as one fused kernel. 0: off."""

    locked_dropout: bool = False
    """Variational ("locked") dropout (Gal & Ghahramani 2016): the masks of the model's
    `dropout` and of `input_dropout` are drawn once per stream and window and shared
    by all its time steps, instead of afresh at every step."""

    input_dropout: float = 0.0
    """Dropout probability on the embedded input characters (AWD-LSTM's dropouti)."""

    embed_dropout: float = 0.0
    """Embedding dropout: each character of the vocabulary is dropped (its embedding
    zeroed wherever it occurs) for one optimizer step with this probability, the rest
    scaled up (AWD-LSTM's dropoute)."""

    ar: float = 0.0
    """Activation regularisation α: adds α · mean(h²) of the top layer's output (after
    dropout) to the training loss. 0: off."""

    tar: float = 0.0
    """Temporal activation regularisation β: adds β · mean((h_t - h_{t-1})²) of the top
    layer's output (before dropout) to the training loss, penalising fast-changing
    states. 0: off."""

    documents: str = "files"
    """What a document of the corpus is (`charnet.documents`): ``files``, running text
    read as contiguous streams; ``lines``, every non-empty line, shuffled each epoch
    and each fed from the start-of-document state."""

    samples: int = 3
    """Samples generated with the current weights every `sample_every` steps (shown
    under the progress bar, kept in metrics.jsonl and TensorBoard); 0 turns them off."""

    sample_every: int | None = None
    """Steps between samples; None: at every evaluation (`eval_every`)."""

    sample_chars: int = 200
    """Characters per sample at most (a line model's sample also ends with its line)."""

    sample_prompt: str = ""
    """Text every sample continues; empty starts a new document."""

    def __post_init__(self) -> None:
        _positive(self, "seq_len", "batch_size", "eval_every", "log_every", "eval_chars", "sample_chars")
        _choice(self, "documents", DOCUMENTS)
        if not isinstance(self.samples, int) or isinstance(self.samples, bool) or not 0 <= self.samples <= MAX_SAMPLES:
            raise ConfigError("samples", f"must be an integer in [0, {MAX_SAMPLES}], got {self.samples!r}")
        if self.sample_every is not None and (not isinstance(self.sample_every, int) or self.sample_every < 0):
            raise ConfigError("sample_every", f"must be zero (never) or a positive step count, got {self.sample_every!r}")
        if not isinstance(self.sample_prompt, str):
            raise ConfigError("sample_prompt", f"must be text, got {self.sample_prompt!r}")
        for name in ("lr",):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ConfigError(name, f"must be a positive number, got {v!r}")
        for name in ("weight_drop", "input_dropout", "embed_dropout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise ConfigError(name, f"must be in [0, 1), got {v!r}")
        if not isinstance(self.locked_dropout, bool):
            raise ConfigError("locked_dropout", f"must be true or false, got {self.locked_dropout!r}")
        for name in ("weight_decay", "grad_clip", "ar", "tar"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ConfigError(name, f"must be zero or positive, got {v!r}")
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError("warmup_steps", f"must be zero or positive, got {self.warmup_steps!r}")
        if self.max_steps is not None:
            _positive(self, "max_steps")
        if self.patience is not None:
            _positive(self, "patience")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ConfigError("epochs", f"must be positive, got {self.epochs!r}")
        if self.max_time is not None and not (self.max_time > 0 and math.isfinite(self.max_time)):
            raise ConfigError("max_time", f"must be a positive duration, got {self.max_time!r}")
        if not (0.0 <= self.val_fraction < 1.0):
            raise ConfigError("val_fraction", f"must be in [0, 1), got {self.val_fraction!r}")
        _choice(self, "device", DEVICES)
        _choice(self, "precision", PRECISIONS)
        if self.max_steps is None and self.epochs is None and self.max_time is None:
            self.max_time = DEFAULT_MAX_TIME

    @property
    def regularized(self) -> bool:
        """Whether any of AWD-LSTM's regularisers is on (`charnet.training.regularize`);
        the model's own `dropout` needs none of them."""
        return bool(self.weight_drop or self.locked_dropout or self.input_dropout or self.embed_dropout
                    or self.ar or self.tar)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})



_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)", re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90``, ``90s``, ``15m``, ``2h`` or ``1h30m``."""
    s = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if not m:
            break
        total += float(m.group(1)) * _UNIT[m.group(2).lower()]
        pos = m.end()
    if not s or pos != len(s) or total <= 0:
        raise ConfigError("max_time", f"cannot read {text!r} as a duration; use e.g. 90s, 15m, 2h or 1h30m")
    return total

