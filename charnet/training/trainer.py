"""The training loop.

Truncated backpropagation through time over contiguous streams (`charnet.training.data.Streams`)
or over batches of line documents (`charnet.training.line_batches`): the recurrent state is
carried, detached, from one window to the next and reset where a window starts its text
afresh (every epoch's start; every batch of documents). AdamW, global-norm gradient
clipping, warmup and cosine decay (`charnet.training.optim`). Validation every
`eval_every` steps, which also saves the last checkpoint (with everything needed to
resume exactly) and the best one; samples from the current weights at each evaluation
(`charnet.training.samples`). Budgets: steps, epochs, wall time; early stopping on
validation patience. A run may start from a trained model (`charnet.training.finetune`).

Reproducibility: with --max-steps or --epochs the learning rate depends only on the
step, so the same seed on the same device gives the same losses, and a run killed and
resumed ends with the same weights as one never interrupted. --max-time schedules by
the clock, so it stops (and anneals) wherever the machine's speed takes it.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from charnet.checkpoint import Checkpoint, ResumeState, save_checkpoint
from charnet.config import ModelConfig, TrainConfig
from charnet.documents import document_start
from charnet.training.data import IGNORE, EncodedCorpus, EvalStreams, Streams
from charnet.training.line_batches import LineBatches, LineDocuments, LineEval
from charnet.device import native_bf16, resolve_device
from charnet.training.distributed import Dist
from charnet.errors import CharnetError, ConfigError
from charnet.training.evaluation import autocast_for, evaluate
from charnet.model import CharRNN, detach_state
from charnet.training import samples
from charnet.training.monitor import Monitor
from charnet.training.optim import lr_at, make_optimizer
from charnet.training.regularize import Regularized
from charnet.training.signals import StopSignals
from charnet.units import bits

def training_data(corpus: EncodedCorpus, cfg: TrainConfig, dist: Dist):
    """(training batches, periodic validation set, whole validation set) of this
    process, for running text or line documents; both validation sets are None with
    no validation split."""
    rank, world = dist.rank, dist.world_size
    global_batch = cfg.batch_size * world
    if cfg.documents == "lines":
        docs = LineDocuments(corpus.ids, corpus.vocab, cfg.val_fraction)
        train = LineBatches(docs, cfg.batch_size, cfg.seq_len, cfg.seed, rank, world)
        validation = lambda chars: LineEval(docs, global_batch, cfg.seq_len, chars, rank, world)  # noqa: E731
    else:
        train_ids, val_ids = corpus.split(cfg.val_fraction)
        train = Streams(train_ids, cfg.batch_size, cfg.seq_len, rank, world)
        validation = lambda chars: EvalStreams(val_ids, global_batch, cfg.seq_len, chars).shard(dist)  # noqa: E731
    if cfg.val_fraction == 0:
        return train, None, None
    return train, validation(cfg.eval_chars), validation(None)


@dataclass(kw_only=True)
class TrainResult:
    run_dir: Path
    step: int
    stopped: str
    """Why training ended: ``budget``, ``early stopping``, or the signal's name."""
    best_val: float | None
    final_val: float | None
    elapsed: float


class Trainer:
    """Trains one model on one encoded corpus into a run directory."""

    def __init__(self, corpus: EncodedCorpus, model_cfg: ModelConfig, cfg: TrainConfig, out: Path, *,
                 dist: Dist | None = None, console: Console | None = None, resume: Checkpoint | None = None,
                 init: CharRNN | None = None, parent: dict | None = None) -> None:
        """`init`: the weights to start from (fine-tuning), else a fresh `model_cfg`
        model; `parent`: the lineage recorded in config.json (`charnet.training.finetune`)."""
        self.corpus, self.cfg, self.out, self.parent = corpus, cfg, Path(out), parent
        self.dist = dist or Dist()
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if cfg.precision == "bfloat16" and self.device.type == "cpu" and not native_bf16(self.device):
            raise ConfigError("precision", "bfloat16 on the CPU needs native bf16 products (AVX512-BF16 or AMX), "
                                           "which this CPU lacks; use float32 (or auto)")
        self.data, self.val_periodic, self.val = training_data(corpus, cfg, self.dist)

        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        self.model = resume.model if resume is not None else init if init is not None else CharRNN(model_cfg)
        self.model.to(self.device).train()
        self.optimizer = make_optimizer(self.model, cfg)
        torch.manual_seed(cfg.seed + self.dist.rank)  # but different dropout masks
        # The regularisers' forward pass wraps the model (sharing its parameters); with
        # none of them on, training runs the model's own forward as it always has.
        net: torch.nn.Module = Regularized(self.model, cfg) if cfg.regularized else self.model
        if self.dist.active:
            net = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            # Compiling the DDP wrapper (not the reverse) lets dynamo split the graph at
            # DDP's gradient buckets, so communication still overlaps the backward pass.
            net = torch.compile(net)
        self.net = net

        self.step, self.prior_elapsed = 0, 0.0
        self.epoch, self.epoch_start = 0, 0  # the epoch the next step trains in, and its first step
        self.best_val: float | None = None
        self.best_step = 0
        self.evals_since_best = 0
        self.periodic_step = -1  # the step of the last periodic evaluation
        self.last_val: float | None = None
        self.last_train: float | None = None
        self.carry = None
        self.sampling_s = 0.0  # seconds this session spent drawing samples
        if resume is not None:
            self._restore(resume.resume)
        self.plan = self.data.epoch(self.epoch)
        self.monitor = Monitor(self.out, enabled=self.dist.main, console=console,
                               resume_step=self.step if resume is not None else None)

    # -- budget ---------------------------------------------------------------------------

    def progress(self, elapsed: float) -> float:
        """Fraction of the budget spent: the largest over steps, epochs and time."""
        cfg = self.cfg
        parts = [0.0]
        if cfg.max_steps:
            parts.append(self.step / cfg.max_steps)
        if cfg.epochs:
            parts.append(self.epochs_done() / cfg.epochs)
        if cfg.max_time:
            parts.append(elapsed / cfg.max_time)
        return max(parts)

    def epochs_done(self) -> float:
        """Passes over the training split so far, fractions included."""
        return self.epoch + (self.step - self.epoch_start) / len(self.plan)

    # -- the loop -------------------------------------------------------------------------

    def _window(self) -> int:
        """The window of the current epoch the next step trains on: moves on to the next
        epoch when this one is done, and drops the carried state where the window
        starts its text from the zero state."""
        k = self.step - self.epoch_start
        if k >= len(self.plan):
            self.epoch, self.epoch_start, k = self.epoch + 1, self.step, 0
            self.plan = self.data.epoch(self.epoch)
        if self.plan.fresh(k):
            self.carry = None
        return k

    def fit(self) -> TrainResult:
        cfg, dist, mon = self.cfg, self.dist, self.monitor
        started = time.monotonic()
        # Sampling pauses the clock: a --max-time run trains as long with samples as without.
        elapsed = lambda: self.prior_elapsed + time.monotonic() - started - self.sampling_s  # noqa: E731
        loss_sum = torch.zeros((), device=self.device)
        window_steps, window_chars, window_start = 0, 0, time.monotonic()
        stopped = "budget"
        lines = f" in {len(self.data.train):,} lines" if cfg.documents == "lines" else ""
        mon.print(f"training {self.model.config.cell} ({self.model.num_parameters():,} parameters) on "
                  f"{self.data.chars:,} characters{lines}, {len(self.plan):,} steps per epoch, "
                  f"device {self.device}, unigram entropy {self.corpus.stats.unigram_bits(self.corpus.vocab.kind):.3f} bits/char")
        mon.start(f"step {self.step}", self.progress(self.prior_elapsed))
        with StopSignals() as signals:
            try:
                while True:
                    # One tiny collective per step: every process stops at the same step,
                    # whichever of them got the signal, and schedules by the same clock.
                    signum, now = dist.max([float(signals.code), elapsed()])
                    done = self.progress(now) >= 1.0
                    if done or signum:
                        stopped = "budget" if done else signal.Signals(int(signum)).name
                        break
                    k = self._window()
                    lr = lr_at(cfg, self.step, self.progress(now))
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    loss, chars = self._train_step(k)
                    loss_sum += loss
                    self.step += 1
                    window_steps += 1
                    window_chars += chars
                    if self.step % cfg.log_every == 0:
                        # The mean over every process' streams: the loss of the global batch.
                        loss = dist.sum([float(loss_sum)])[0] / (window_steps * dist.world_size)
                        if not math.isfinite(loss):
                            raise CharnetError(f"training diverged (loss {loss} at step {self.step}); lower --lr")
                        t, e = time.monotonic(), elapsed()
                        rate = dist.sum([float(window_chars)])[0] / (t - window_start)
                        record = (self.step, loss, lr, rate, self.progress(e), e, self.epochs_done())
                        dist.on_main(lambda: mon.train(*record))
                        self.last_train = loss
                        loss_sum.zero_()
                        window_steps, window_chars, window_start = 0, 0, t
                    if self.step % cfg.eval_every == 0:
                        if self._evaluate_and_save(elapsed()):
                            stopped = "early stopping"
                            break
                    if samples.due(cfg, self.step):
                        self._sample(elapsed())
            finally:
                mon.stop()
            # Still inside StopSignals: a signal now (torchrun forwards Ctrl-C to every
            # process) must not kill one process in the middle of the final collectives.
            final_val = None
            if stopped in ("budget", "early stopping") and self.val is not None:
                if self.periodic_step != self.step:
                    # The best checkpoint is chosen on the periodic evaluation's set: the
                    # final weights compete on that set too, not on the whole split.
                    self._compare(self._validate(self.val_periodic))
                final_val = self._validate(self.val)
                chars = self._val_chars(self.val)
                mon.print(f"final: val {final_val:.4f} nats/char, {bits(final_val):.4f} bits/char "
                          f"over all {chars:,} validation characters")
            self.last_val = final_val if final_val is not None else self.last_val
            self._save("last", elapsed(), resume=True)
            if final_val is not None and self.best_step == self.step:
                self._save("best", elapsed(), resume=False)  # with the whole split's figure
            title = f"charnet {self.model.config.cell} {self.model.config.layers}x{self.model.config.hidden}"
            dist.on_main(lambda: mon.plot(title))
        mon.close()
        return TrainResult(run_dir=self.out, step=self.step, stopped=stopped, best_val=self.best_val, final_val=final_val,
                           elapsed=elapsed())

    def close(self) -> None:
        """Drop the DDP wrapper, which holds the process group, before it is destroyed
        (see `charnet.training.distributed.shutdown`)."""
        self.net = self.model
        if self.cfg.compile:
            torch._dynamo.reset()  # its caches hold the compiled module, and so the wrapper

    def _train_step(self, k: int) -> tuple[torch.Tensor, int]:
        """One optimizer step on window k of the current epoch: (its loss, the
        characters it trained on)."""
        x, y = self.plan.batch(k)
        chars = y.numel() if self.cfg.documents == "files" else int((y != IGNORE).sum())
        if self.device.type == "cuda":
            x, y = x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        else:
            x, y = x.to(self.device), y.to(self.device)
        penalty = None
        with autocast_for(self.device, self.cfg.precision):
            if self.cfg.regularized:
                valid = (y != IGNORE) if self.cfg.documents == "lines" else None
                logits, state, penalty = self.net(x, self.carry, valid)
            else:
                logits, state = self.net(x, self.carry)
        logits, targets = logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
        if self.cfg.documents == "lines":
            # Padding leaves processes different numbers of targets: dividing by the global
            # batch's count (DDP then averages) weighs every target alike, as one process would.
            count = self.dist.sum([float(chars)])[0] if self.dist.active else chars
            loss = F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE) * (self.dist.world_size / count)
        else:
            loss = F.cross_entropy(logits, targets)
        # AR/TAR shape the gradient only: the loss logged and compared is the data's.
        (loss if penalty is None else loss + penalty).backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.carry = detach_state(state)
        return loss.detach(), chars

    def _sample(self, elapsed: float) -> None:
        """Draw and show samples (the main process), the time taken off every process'
        training clock (the others wait for it)."""
        start = time.monotonic()
        if self.dist.main:
            texts = samples.draw(self.model, self.corpus.vocab, self.cfg, self._document_start())
            self.monitor.samples(self.step, texts, elapsed)
        self.sampling_s += self.dist.max([time.monotonic() - start])[0]

    def _document_start(self) -> str:
        return document_start(self.cfg.documents, self.corpus.separator)

    def _val_chars(self, streams: EvalStreams | LineEval) -> int:
        return int(self.dist.sum([streams.targets])[0])

    def _validate(self, streams: EvalStreams | LineEval) -> float:
        # A process may hold no validation streams (a split with fewer streams than
        # processes); it still joins the sum, with nothing in it.
        total, count = evaluate(self.model, streams, self.device, self.cfg.precision) if streams.targets else (0.0, 0)
        total, count = self.dist.sum([total, float(count)])
        return total / count

    def _evaluate_and_save(self, elapsed: float) -> bool:
        """Validate, save last (and best); True when patience has run out."""
        if self.val is None:
            self._save("last", elapsed, resume=True)
            return False
        self.last_val = self._validate(self.val_periodic)
        improved = self._compare(self.last_val)
        chars, val = self._val_chars(self.val_periodic), self.last_val  # collective: outside on_main
        self.dist.on_main(lambda: self.monitor.evaluation(self.step, val, elapsed, improved, chars))
        self._save("last", elapsed, resume=True)
        if improved:
            self._save("best", elapsed, resume=False)
        return self.cfg.patience is not None and self.evals_since_best >= self.cfg.patience

    def _compare(self, periodic: float) -> bool:
        """Record the current weights' loss on the periodic set; True if a new best."""
        self.periodic_step = self.step
        improved = self.best_val is None or periodic < self.best_val
        if improved:
            self.best_val, self.best_step, self.evals_since_best = periodic, self.step, 0
        else:
            self.evals_since_best += 1
        return improved

    # -- checkpoints ----------------------------------------------------------------------

    def _info(self, elapsed: float) -> dict:
        val = self.last_val
        return {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training": {**self.cfg.to_dict(), "world_size": self.dist.world_size},
            "corpus": {**self.corpus.describe(), "documents": self.cfg.documents,
                       "document_start": self._document_start()},
            **({"parent": self.parent} if self.parent else {}),
            "metrics": {
                "step": self.step,
                "epoch": round(self.epochs_done(), 4),
                "train_loss": self.last_train,
                "val_loss": val,
                "val_bpc": bits(val) if val is not None else None,
                "best_val_loss": self.best_val,
                "best_step": self.best_step,
                "elapsed_s": round(elapsed, 2),
                "unigram_bpc": self.corpus.stats.unigram_bits(self.corpus.vocab.kind),
            },
        }

    def _save(self, name: str, elapsed: float, *, resume: bool) -> None:
        state = self._resume_state(elapsed) if resume else None  # collective: every rank
        info = self._info(elapsed)
        # Every process waits for the write: none may run ahead (or exit, making torchrun
        # kill the main process) while a checkpoint is half written.
        self.dist.on_main(lambda: save_checkpoint(self.out / name, self.model, self.corpus.vocab, info, state))

    def _resume_state(self, elapsed: float) -> ResumeState:
        opt = self.optimizer.state_dict()
        tensors = {f"optim.{pid}.{key}": v for pid, st in opt["state"].items() for key, v in st.items()}
        # One RNG state per process (row = rank) and the carried state of every stream
        # (batch dim in rank order), so any world size with the same streams can resume.
        tensors["rng.cpu"] = self.dist.gather(torch.get_rng_state().unsqueeze(0), 0)
        if self.device.type == "cuda":
            tensors["rng.cuda"] = self.dist.gather(torch.cuda.get_rng_state(self.device).unsqueeze(0), 0)
        if self.carry is not None:
            for i, s in enumerate(self.carry):
                # gloo gathers float32 on every build; bf16 -> float32 -> bf16 is exact.
                tensors[f"carry.{i}"] = self.dist.gather(s.float(), 1).to(s.dtype)
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]]
        meta = {"step": self.step, "epoch": self.epoch, "epoch_start": self.epoch_start, "elapsed": elapsed, "best_val": self.best_val, "best_step": self.best_step,
                "evals_since_best": self.evals_since_best, "last_val": self.last_val,
                "world_size": self.dist.world_size, "batch_size": self.cfg.batch_size, "param_groups": groups}
        return ResumeState(tensors, meta)

    def _restore(self, state: ResumeState | None) -> None:
        if state is None:
            raise CharnetError("--resume: the last checkpoint holds no resume state")
        meta, tensors = state.meta, state.tensors
        optim_state: dict[int, dict] = {}
        for name, t in tensors.items():
            if name.startswith("optim."):
                _, pid, key = name.split(".", 2)
                optim_state.setdefault(int(pid), {})[key] = t
        self.optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
        self.step, self.prior_elapsed = meta["step"], meta["elapsed"]
        # Runs saved before epochs were recorded read running text: every epoch one length.
        self.epoch = meta.get("epoch", self.step // len(self.data.epoch(0)))
        self.epoch_start = meta.get("epoch_start", self.epoch * len(self.data.epoch(0)))
        self.best_val, self.best_step = meta["best_val"], meta["best_step"]
        self.evals_since_best, self.last_val = meta["evals_since_best"], meta["last_val"]
        world, b, r = self.dist.world_size, self.cfg.batch_size, self.dist.rank
        saved_world = meta.get("world_size", 1)
        if saved_world == world:
            torch.set_rng_state(tensors["rng.cpu"][r].contiguous())
            if self.device.type == "cuda" and "rng.cuda" in tensors:
                torch.cuda.set_rng_state(tensors["rng.cuda"][r].contiguous(), self.device)
        else:
            # Each process had its own dropout stream; with another number of processes
            # there is no one to continue, so reseed per process and per step.
            torch.manual_seed(self.cfg.seed + 1000 * self.step + r)
        if saved_world * meta.get("batch_size", b) == world * b:
            # The same global batch cuts the same streams, whatever the world size: take
            # this process' slice of the carried state and continue exactly.
            if "carry.0" in tensors:
                self.carry = tuple(tensors[f"carry.{i}"][:, r * b:(r + 1) * b].to(self.device).contiguous()
                                   for i in range(self.model.config.state_tensors))
        # Otherwise the corpus is cut into other streams: the carried state belongs to
        # none of them, and each stream starts from the zero state.
