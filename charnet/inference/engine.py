"""The sampling engine: a checkpoint loaded for generation, and `charnet.load`.

    import charnet
    model = charnet.load("shakespeare")            # a name under checkpoints/, or a path
    print(model.generate("ROMEO:", max_chars=200, temperature=0.8, seed=1).text)
    for piece in model.stream("JULIET:", max_chars=200):
        print(piece, end="", flush=True)
    model.score("To be, or not to be").bits_per_char

An `Engine` owns the model, its single-step kernel (`charnet.inference.kernel`), and a prompt-state
cache (`charnet.inference.prompt_cache`). `generate` and `stream` run a `charnet.inference.batch.Batch` to
completion; a server drives its own long-lived batch with `new_batch`. Calls from
several threads are serialised by `lock`, which also guards the kernel's buffers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from charnet.inference.batch import Batch
from charnet.checkpoint import Checkpoint, find, load_checkpoint
from charnet.device import resolve_device
from charnet.errors import ConfigError
from charnet.inference.generation import CharLogprob, Sequence
from charnet.inference.kernel import StepKernel, environment as kernel_environment
from charnet.inference.novelty import Novelty, NoveltyReport
from charnet.inference.prompt_cache import DEFAULT_MAX_BYTES, PromptCache
from charnet.inference.request import GenerationRequest
from charnet.inference.scoring import Score, score_ids
from charnet.tokenizer import Vocab


@dataclass(kw_only=True)
class Completion:
    """One generated sequence."""

    text: str
    """The generated text (without the prompt, and without a stop string that ended it)."""

    finish_reason: str
    """``stop`` (a stop string appeared), ``length`` (max_chars reached) or ``cancelled``."""

    seed: int
    """The seed its draws used: pass it again to get the same text."""

    prompt_tokens: int
    """Tokens in the prompt (characters, or bytes for a byte vocabulary)."""

    completion_tokens: int
    """Tokens generated, including those of a stop string that was cut off."""

    unknown_prompt_chars: int = 0
    """Prompt characters outside the vocabulary, fed to the model as the unknown id."""

    logprobs: list[CharLogprob] = field(default_factory=list)
    """Per-character log-probabilities, when asked for."""

    def __str__(self) -> str:
        return self.text


def _completion(seq: Sequence) -> Completion:
    return Completion(text=seq.text, finish_reason=seq.finish_reason or "", seed=seq.seed,
                      prompt_tokens=seq.prompt_tokens, completion_tokens=seq.generated,
                      unknown_prompt_chars=seq.unknown_prompt_chars, logprobs=seq.logprobs)


class Engine:
    """A checkpoint loaded for generation and scoring."""

    def __init__(self, checkpoint: Checkpoint, cache_bytes: int = DEFAULT_MAX_BYTES, *, fused: bool | None = None) -> None:
        """`fused`: the kernel's element-wise path (`StepKernel`): compiled wherever it
        can be (None), or forced either way."""
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.vocab: Vocab = checkpoint.vocab
        self.device = next(self.model.parameters()).device
        self.kernel = StepKernel(self.model, fused=fused)
        self.cache = PromptCache(cache_bytes)
        self.lock = threading.RLock()

    @classmethod
    def open(cls, path_or_name: str | Path, device: str | torch.device = "cpu", *,
             cache_bytes: int = DEFAULT_MAX_BYTES) -> Engine:
        """The one loader: the checkpoint at `path_or_name` (a directory, a run
        directory, or a name under checkpoints/) on `device` (a torch device, or
        ``auto``/``cpu``/``cuda``/``mps``), checked and ready to generate. `charnet.load`,
        `charnet sample`, `charnet eval` and the server all load through it."""
        dev = resolve_device(device) if isinstance(device, str) else device
        return cls(load_checkpoint(find(path_or_name), dev), cache_bytes)

    @property
    def name(self) -> str:
        return self.checkpoint.path.name

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    def new_batch(self, *, auto_admit: bool = True) -> Batch:
        """An empty batch sharing this engine's kernel and prompt cache (hold `lock`
        while driving it)."""
        return Batch(self.kernel, self.vocab, self.cache, auto_admit=auto_admit,
                     document_start=self.checkpoint.document_start)

    # -- generation -----------------------------------------------------------------------

    def generate(self, prompt: str = "", *, num_samples: int = 1, **settings) -> Completion | list[Completion]:
        """Continue `prompt`. Settings are `GenerationRequest.of`'s: the fields of
        `GenerationRequest` (max_chars, stop, logprobs, constraint) and of
        `SamplingParams` (temperature, top_k, top_p, seed, ...).

        Returns a `Completion`, or with ``num_samples=n`` a list of n generated together
        as one batch; sample i uses seed ``seed + i``, so it equals the single run with
        that seed.
        """
        request = GenerationRequest.of(prompt, **settings)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ConfigError("num_samples", f"must be an integer >= 1, got {num_samples!r}")
        with self.lock:
            batch = self.new_batch()
            seqs = batch.add(request, num_samples)
            while len(batch):
                batch.step()
        for seq in seqs:
            if seq.error is not None:  # the batch isolated it; a lone caller wants it raised
                raise seq.error
        done = [_completion(s) for s in seqs]
        return done[0] if num_samples == 1 else done

    def stream(self, prompt: str = "", **settings) -> Iterator[str]:
        """Like `generate`, yielding the text as it is produced; the pieces joined
        equal `generate(...).text` with the same seed."""
        request = GenerationRequest.of(prompt, **settings)
        with self.lock:
            batch = self.new_batch()
            batch.add(request)
            while len(batch):
                for piece in batch.step():
                    if piece.seq.error is not None:
                        raise piece.seq.error
                    if piece.text:
                        yield piece.text

    # -- novelty --------------------------------------------------------------------------

    def novelty(self, samples: str | list[str], corpus: str | Path | list[str | Path]) -> NoveltyReport:
        """Which of `samples` (or of their lines, for a line model) the `corpus` holds,
        read the way this model was trained on it (`charnet.inference.novelty`):
        ``model.novelty(texts, "corpora/names.txt").fractions["new"]``."""
        specs = [corpus] if isinstance(corpus, (str, Path)) else list(corpus)
        texts = [samples] if isinstance(samples, str) else list(samples)
        return Novelty.for_checkpoint(specs, self.checkpoint.config).check(texts)

    # -- scoring --------------------------------------------------------------------------

    def score(self, text: str, *, top: int = 0) -> Score:
        """How well the model predicts `text` from its initial state: bits/char and
        the log-probability of every character after the first (as `charnet eval`);
        with `top` > 0, the `top` most likely characters at each position too."""
        ids = self.vocab.encode(text)
        with self.lock, torch.no_grad():
            return score_ids(self.model, ids, self.device, unknown=self.vocab.count_unknown(ids), top=top)


_LOADED: dict[tuple, Engine] = {}
_LOAD_LOCK = threading.Lock()


def load(path_or_name: str | Path, device: str | torch.device = "cpu") -> Engine:
    """`Engine.open`, cached per checkpoint and device (the Python API's `charnet.load`):
    a checkpoint that changes on disk is loaded again, and so is one asked for under
    other kernel settings (`charnet.inference.kernel.environment`)."""
    directory = find(path_or_name)
    key = (str(directory.resolve()), str(device), (directory / "config.json").stat().st_mtime, *kernel_environment())
    with _LOAD_LOCK:
        engine = _LOADED.get(key)
        if engine is None:
            for stale in [k for k in _LOADED if k[:2] == key[:2]]:
                del _LOADED[stale]
            engine = _LOADED[key] = Engine.open(directory, device)
    return engine
