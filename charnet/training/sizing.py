"""Automatic sizing: the model, regularisation and batch `charnet train` uses when given no shape.

The rule, from the training split's length C, the budget and this device's measured speed:

1. Batch and window from C alone: 64 streams x 128 characters, halved (streams first,
   down to 8, then the window, down to 16, then streams down to 1) until an epoch
   holds at least `MIN_STEPS_PER_EPOCH` steps, so even a corpus of a few kilobytes
   trains and sees its text from many window offsets. Line documents take the window
   that holds 95% of their lines whole.
2. The characters the budget buys, D(shape): a --max-time budget times the training
   FLOP/s measured on a probe model in the first seconds (`measure_flops`), over the
   shape's training FLOPs per character (`charnet.flops`); or steps x batch x window;
   or epochs x C.
3. The widest 2-layer model (hidden a multiple of 32, embedding a quarter of it) that
   the budget can still show `CHARS_PER_PARAMETER` characters per parameter, and that
   has at most `PARAMETERS_PER_CHAR` parameters per training character, so a small
   corpus is not memorised outright; below 128 units, one layer.
4. Regularisation from the epochs that plans, E = D / C: dropout p = 0.05 log2(2E)
   clamped to [0.1, 0.5], locked across time, and the same p of weight drop on the
   recurrent matrices. A few passes barely overfit, and strong dropout then mostly slows
   learning (0.35 at 7.7 passes did not beat 0.2 at 2.9, above); hundreds of passes over
   a small corpus need it all.

Every option given explicitly wins over the rule.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charnet.config import ModelConfig, TrainConfig
from charnet.flops import flops_per_char
from charnet.model import CharRNN
from charnet.training.data import EncodedCorpus
from charnet.training.evaluation import autocast_for
from charnet.training.line_batches import LineDocuments

CHARS_PER_PARAMETER = 1.5
"""Training characters the budget should buy per parameter. Wider models learn more per
character but see fewer. On tinyshakespeare in 15 minutes on the 2-core EPYC (one
bench/quality.py run, float32), a 2x512 gru that saw 1.1 characters per parameter (2.9
epochs, dropout 0.2) reached 1.622 nats/char, and a 2x352 one that saw 6.3 (the first
rule: 4 per parameter, dropout and weight drop 0.35, 7.7 epochs) 1.635."""

PARAMETERS_PER_CHAR = 8.0
"""Most parameters per training character: the bundled names model (7 per character,
dropout 0.3) still generalises, and more lets a small corpus be memorised."""

MIN_STEPS_PER_EPOCH = 16
"""Fewest optimizer steps per pass over the training split the batch may leave."""

PROBE_SECONDS = 2.0
"""How long `measure_flops` times its probe model."""

MAX_HIDDEN = 4096


@dataclass(frozen=True)
class Budget:
    """What the run may spend (`TrainConfig`'s budgets): training stops at whichever
    given one runs out first."""

    seconds: float | None = None
    steps: int | None = None
    epochs: float | None = None


@dataclass
class Sizing:
    """The rule's choices, and what it chose them from."""

    vocab_size: int
    """The corpus's vocabulary (`ModelConfig.vocab_size`)."""
    cell: str
    """The cell sized for (its FLOPs per character set the width)."""
    layers: int
    """`ModelConfig.layers` chosen: 2, or 1 under 128 units."""
    hidden: int
    """`ModelConfig.hidden` chosen, a multiple of 32 (16 for one layer)."""
    embedding: int
    """`ModelConfig.embedding` chosen: a quarter of `hidden`, down to a multiple of 16, at least 16."""
    dropout: float
    """`ModelConfig.dropout`, locked across time (`TrainConfig.locked_dropout`)."""
    weight_drop: float
    """`TrainConfig.weight_drop`."""
    batch_size: int
    """`TrainConfig.batch_size`: streams per process."""
    seq_len: int
    """`TrainConfig.seq_len`: the window."""
    train_chars: int
    """Characters in the training split."""
    planned_chars: float
    """Training characters the budget buys at this shape."""
    flops_per_s: float | None
    """Training FLOP/s measured on the probe (every process'); None without a budget in
    seconds."""

    @property
    def chars_per_s(self) -> float | None:
        """This shape's speed as the probe's FLOP/s predict it."""
        return self.flops_per_s / _training_flops(self.config) if self.flops_per_s else None

    @property
    def config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab_size, cell=self.cell, layers=self.layers, hidden=self.hidden,
                           embedding=self.embedding, dropout=self.dropout)

    @property
    def epochs(self) -> float:
        return self.planned_chars / self.train_chars

    def describe(self, budget: Budget) -> str:
        """One line for the start of training."""
        parts = []
        if budget.seconds is not None:
            minutes, seconds = divmod(round(budget.seconds), 60)
            length = f"{minutes} min" + (f" {seconds} s" if seconds else "") if minutes else f"{seconds} s"
            parts.append(f"{length} budget, {self.flops_per_s / 1e9:.1f} GFLOP/s measured "
                         f"(~{self.chars_per_s:,.0f} chars/s at this shape)")
        if budget.steps is not None:
            parts.append(f"{budget.steps:,} steps")
        if budget.epochs is not None:
            parts.append(f"{budget.epochs:g} epochs")
        spend = ", ".join(parts)
        return (f"sizing: corpus {_chars(self.train_chars)} training chars, {spend} -> {self.layers}x{self.hidden} "
                f"{self.cell}, embedding {self.embedding}, dropout {self.dropout:g} (locked), weight drop "
                f"{self.weight_drop:g}, seq {self.seq_len}, batch {self.batch_size}: {self.epochs:.1f} epochs "
                f"planned (explicit options win; see charnet.training.sizing)")


def _chars(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def batch_shape(train_chars: int, world_size: int = 1, lines: tuple[int, int] | None = None) -> tuple[int, int]:
    """(batch size per process, window) for a training split of `train_chars`. For line
    documents, `lines` is (training lines, their 95th-percentile length with the line
    break): the window is the power of two holding that, between 16 and 128, and the
    batch counts lines."""
    batch, window = 64, 128
    if lines is not None:
        count, length = lines
        window = min(128, max(16, 1 << max(0, length - 1).bit_length()))
        while batch > 1 and batch * world_size * MIN_STEPS_PER_EPOCH > count:
            batch //= 2
        return batch, window
    fits = lambda b, t: b * world_size * t * MIN_STEPS_PER_EPOCH <= train_chars  # noqa: E731
    while not fits(batch, window):
        if batch > 8:
            batch //= 2
        elif window > 16:
            window //= 2
        elif batch > 1:
            batch //= 2
        else:
            break
    return batch, window


def corpus_shape(corpus: EncodedCorpus, documents: str, val_fraction: float) -> tuple[int, tuple[int, int] | None]:
    """(training characters, (training lines, 95th-percentile line length) or None for
    running text) of a corpus split as the trainer splits it."""
    if documents != "lines":
        return len(corpus.split(val_fraction)[0]), None
    docs = LineDocuments(corpus.ids, corpus.vocab, val_fraction)
    lengths = docs.lengths[~docs.held] + 1  # with the line break each is trained to end with
    return int(lengths.sum()), (len(lengths), int(np.percentile(lengths, 95)))


def parameters(cfg: ModelConfig) -> int:
    with torch.device("meta"):  # counts without allocating
        return CharRNN(cfg).num_parameters()


def measure_flops(cell: str, vocab: int, device: torch.device, precision: str, seconds: float = PROBE_SECONDS) -> float:
    """Training matrix-product FLOP/s this device reaches: forward and backward passes of
    a 2x256 probe of `cell` on a batch of 64 x 128 random characters (training's own
    shape: a smaller batch runs the products at a fraction of the speed and undersizes
    the model), timed for `seconds`."""
    cfg = ModelConfig(vocab_size=vocab, cell=cell, layers=2, hidden=256, embedding=64, dropout=0.0)
    model = CharRNN(cfg).to(device)
    generator = torch.Generator().manual_seed(0)  # leaves the global generator to the run's seed
    idx = torch.randint(vocab, (64, 129), generator=generator).to(device)

    def step() -> None:
        with autocast_for(device, precision):
            logits, _ = model(idx[:, :-1])
        F.cross_entropy(logits.float().reshape(-1, vocab), idx[:, 1:].reshape(-1)).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up: allocations, kernel selection
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    chars_per_s = steps * idx[:, 1:].numel() / (time.perf_counter() - start)
    return chars_per_s * flops_per_char(cell, 2, 256, 64, vocab)["training"]


def choose(train_chars: int, vocab: int, budget: Budget, *, cell: str, flops_per_s: float | None = None,
           world_size: int = 1, lines: tuple[int, int] | None = None) -> Sizing:
    """The rule (see the module docstring). `flops_per_s`: the whole run's (every
    process'), needed for a budget in seconds."""
    if budget.seconds is not None and not flops_per_s:
        raise ValueError("a budget in seconds needs the measured FLOP/s")
    batch, window = batch_shape(train_chars, world_size, lines)

    def shape(layers: int, hidden: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=hidden,
                           embedding=max(16, hidden // 4 // 16 * 16))

    def planned(cfg: ModelConfig) -> float:  # the budget that runs out first
        limits = []
        if budget.seconds is not None:
            limits.append(flops_per_s * budget.seconds / _training_flops(cfg))
        if budget.steps is not None:
            limits.append(float(budget.steps * batch * world_size * window))
        if budget.epochs is not None:
            limits.append(budget.epochs * train_chars)
        return min(limits)

    def fits(cfg: ModelConfig) -> bool:
        n = parameters(cfg)
        return planned(cfg) >= CHARS_PER_PARAMETER * n and n <= PARAMETERS_PER_CHAR * train_chars

    def widest(layers: int, step: int) -> ModelConfig:
        best = shape(layers, step)
        for hidden in range(2 * step, MAX_HIDDEN + 1, step):
            cfg = shape(layers, hidden)
            if not fits(cfg):
                break
            best = cfg
        return best

    cfg = widest(2, 32)
    if cfg.hidden < 128:
        cfg = widest(1, 16)
    chars = planned(cfg)
    p = round(min(0.5, max(0.1, 0.05 * math.log2(2 * chars / train_chars))) * 20) / 20  # to 0.05
    return Sizing(vocab_size=vocab, cell=cell, layers=cfg.layers, hidden=cfg.hidden, embedding=cfg.embedding, dropout=p, weight_drop=p,
                  batch_size=batch, seq_len=window, train_chars=train_chars, planned_chars=chars,
                  flops_per_s=flops_per_s if budget.seconds is not None else None)


SIZED_MODEL = ("layers", "hidden", "embedding", "dropout")
SIZED_TRAINING = ("seq_len", "batch_size", "weight_drop", "locked_dropout")


def apply(sizing: Sizing, model: ModelConfig, train: TrainConfig, given: set[str]) -> tuple[ModelConfig, TrainConfig]:
    """The configs with the rule's choices, except for the fields in `given` (set
    explicitly)."""
    chosen = {**dataclasses.asdict(sizing), "locked_dropout": True}
    model = dataclasses.replace(model, **{k: chosen[k] for k in SIZED_MODEL if k not in given})
    train = dataclasses.replace(train, **{k: chosen[k] for k in SIZED_TRAINING if k not in given})
    return model, train


def _training_flops(cfg: ModelConfig) -> float:
    return flops_per_char(cfg.cell, cfg.layers, cfg.hidden, cfg.embedding, cfg.vocab_size)["training"]
