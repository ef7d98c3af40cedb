"""Samples while training: a few short texts from the current weights at a fixed seed.

They are drawn from a copy of the model by the sampling engine (`charnet.inference`),
whose randomness is counter-based and never touches torch's generators, so training
with samples ends with exactly the weights of training without them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from charnet.checkpoint import Checkpoint
from charnet.config import TrainConfig
from charnet.documents import LINE_BREAK
from charnet.inference.engine import Engine
from charnet.model import CharRNN
from charnet.tokenizer import Vocab

TEMPERATURE = 0.8
"""Samples while training are drawn at this temperature: a little sharper than the
model's distribution, so progress shows as words before it shows as style."""


def due(cfg: TrainConfig, step: int) -> bool:
    """Whether the trainer samples after `step`: every `sample_every` steps, or with
    every evaluation when that is None."""
    every = cfg.eval_every if cfg.sample_every is None else cfg.sample_every
    return cfg.samples > 0 and every > 0 and step % every == 0


def draw(model: CharRNN, vocab: Vocab, cfg: TrainConfig, document_start: str) -> list[str]:
    """`cfg.samples` texts continuing `cfg.sample_prompt`, seeds ``cfg.seed + i``; a line
    model's samples end with their line."""
    with torch.random.fork_rng(devices=[]):  # nothing here may move training's generators
        twin = copy.deepcopy(model).cpu().float().eval()
        engine = Engine(Checkpoint(path=Path("."), model=twin, vocab=vocab,
                                   config={"corpus": {"document_start": document_start}}), cache_bytes=0)
        stop = [LINE_BREAK] if cfg.documents == "lines" else []
        done = engine.generate(cfg.sample_prompt, num_samples=cfg.samples, max_chars=cfg.sample_chars,
                               temperature=TEMPERATURE, seed=cfg.seed, stop=stop)
    return [c.text for c in (done if isinstance(done, list) else [done])]
