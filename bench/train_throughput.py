"""Training throughput of charnet's Trainer against a bare PyTorch loop of the same shape.

    python -m bench.train_throughput [--quick] [--seconds S] [--hidden H] [--layers L]
                                     [--batch-size B] [--seq-len T] [--json PATH]

For each cell (rnn, lstm, peephole, gru) it times `Trainer._train_step`, the step `charnet
train` runs (batch read from the encoded corpus, forward, loss, backward, gradient
clipping, AdamW, state carried), and a bare loop: embedding + nn.RNN/LSTM/GRU + linear
head, cross-entropy, backward, AdamW, on one fixed batch. Both have the same shape and
dropout and run on the same machine in alternating rounds (A B, B A, A B...), so a slower
stretch of a busy machine hits both; each ratio is the median over the rounds' pairs.

PyTorch has no peephole LSTM, so the peephole cell's bare reference is nn.LSTM of the same
shape. peephole/lstm is (peephole trainer / bare nn.LSTM) / (lstm trainer / bare nn.LSTM):
the two trainer runs are compared through the bare loop they were each measured against.

Targets: trainer >= 0.9x the bare loop for lstm, and peephole >= 0.5x lstm.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import ROOT, machine, tinyshakespeare, write_json
from charnet.config import CELLS

TARGETS = {"lstm trainer/bare": 0.9, "peephole/lstm": 0.5}
DROPOUT = 0.1  # charnet's default, in both loops


class Bare(nn.Module):
    """The textbook char-RNN: embedding, a PyTorch recurrent module, a linear head."""

    def __init__(self, cell: str, vocab: int, embedding: int, hidden: int, layers: int) -> None:
        super().__init__()
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "peephole": nn.LSTM, "gru": nn.GRU}[cell]
        self.embed = nn.Embedding(vocab, embedding)
        self.rnn = cls(embedding, hidden, layers, batch_first=True, dropout=DROPOUT if layers > 1 else 0.0)
        self.drop = nn.Dropout(DROPOUT)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        y, state = self.rnn(self.embed(x), state)
        return self.head(self.drop(y)), state


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


class BareLoop:
    def __init__(self, cell: str, vocab: int, args, x: torch.Tensor, y: torch.Tensor) -> None:
        torch.manual_seed(0)
        self.model = Bare(cell, vocab, args.embedding, args.hidden, args.layers)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=2e-3)
        self.x, self.y, self.state = x, y, None

    def step(self) -> None:
        logits, state = self.model(self.x, self.state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.state = _detach(state)


class TrainerLoop:
    """charnet's own step, through the Trainer built as `charnet train` builds it."""

    def __init__(self, cell: str, corpus, args, out: Path) -> None:
        from charnet.config import ModelConfig, TrainConfig
        from charnet.training.trainer import Trainer

        model_cfg = ModelConfig(vocab_size=corpus.vocab.size, cell=cell, layers=args.layers, hidden=args.hidden,
                                embedding=args.embedding, dropout=DROPOUT)
        cfg = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, device="cpu", max_steps=1 << 30,
                          val_fraction=0.0)
        self.trainer = Trainer(corpus, model_cfg, cfg, out)

    def step(self) -> None:
        t = self.trainer
        t._train_step(t._window())  # the window fit() would train on, its state reset where fit() resets it
        t.step += 1

    def close(self) -> None:
        self.trainer.monitor.close()


def timed_round(loop, seconds: float) -> tuple[int, float]:
    """Steps run and seconds taken, stepping until at least `seconds` have passed."""
    steps, start = 0, time.perf_counter()
    while True:
        loop.step()
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps, elapsed


def measure(cell: str, corpus, args, out: Path) -> dict:
    trainer = TrainerLoop(cell, corpus, args, out / cell)
    x, y = trainer.trainer.plan.batch(0)
    bare = BareLoop(cell, corpus.vocab.size, args, x.clone(), y.clone())
    chars_per_step = args.batch_size * args.seq_len
    for loop in (trainer, bare):  # warm up allocators and kernels outside the timing
        for _ in range(args.warmup):
            loop.step()
    rates = {"trainer": [], "bare": []}
    order = [("trainer", trainer), ("bare", bare)]
    for _ in range(args.rounds):
        for name, loop in order:
            steps, seconds = timed_round(loop, args.seconds / args.rounds)
            rates[name].append(steps * chars_per_step / seconds)
        order.reverse()  # A B, B A, A B...: neither loop always runs first after the other
    trainer.close()
    pairs = [a / b for a, b in zip(rates["trainer"], rates["bare"])]
    return {"cell": cell, "bare_reference": "nn.LSTM" if cell == "peephole" else f"nn.{cell.upper()}",
            "trainer_chars_per_s": statistics.median(rates["trainer"]), "bare_chars_per_s": statistics.median(rates["bare"]),
            "trainer_over_bare": statistics.median(pairs), "pair_ratios": pairs, "rounds": rates}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny shape and a fraction of a second per cell (a smoke test)")
    p.add_argument("--seconds", type=float, help="timed seconds per cell and loop (default 8, quick 0.2)")
    p.add_argument("--hidden", type=int, help="units per layer (default 512)")
    p.add_argument("--layers", type=int, help="stacked layers (default 2)")
    p.add_argument("--embedding", type=int, help="embedding size (default 128)")
    p.add_argument("--batch-size", type=int, help="streams per step (default 64)")
    p.add_argument("--seq-len", type=int, help="characters per window (default 128)")
    p.add_argument("--rounds", type=int, help="alternations per cell (default 4)")
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's, one per core; quick 1)")
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells (default all four)")
    p.add_argument("--json", type=Path, help="also write the results, with machine information, here")
    args = p.parse_args(argv)
    defaults = dict(seconds=8.0, hidden=512, layers=2, embedding=128, batch_size=64, seq_len=128, rounds=4)
    if args.quick:
        defaults.update(seconds=0.2, hidden=32, layers=1, embedding=16, batch_size=4, seq_len=16, rounds=2)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.threads is None and args.quick:
        args.threads = 1  # a tiny shape gains nothing from threads, which spin-wait on a busy machine
    if args.threads is not None:
        if args.threads <= 0:
            p.error("--threads must be positive")
        torch.set_num_threads(args.threads)
    args.warmup = 1 if args.quick else 2
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    if bad := [c for c in args.cells if c not in CELLS]:
        p.error(f"unknown cell {bad[0]!r}; choose from {', '.join(CELLS)}")
    for name in ("seconds", "hidden", "layers", "embedding", "batch_size", "seq_len", "rounds"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from charnet.training.data import load_corpus

    corpus_path = tinyshakespeare() or ROOT / "corpora" / "shakespeare.txt"
    corpus = load_corpus([corpus_path])
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} thread(s); "
          f"corpus {corpus_path.name} ({len(corpus):,} chars)")
    print(f"shape: {args.layers} x {args.hidden} hidden, embedding {args.embedding}, batch {args.batch_size}, "
          f"seq {args.seq_len}, dropout {DROPOUT}; {args.seconds:g}s per loop per cell in {args.rounds} rounds\n")
    results = []
    with tempfile.TemporaryDirectory(prefix="charnet-bench-") as out:
        for cell in args.cells:
            results.append(measure(cell, corpus, args, Path(out)))
            r = results[-1]
            print(f"  {cell:<9} trainer {r['trainer_chars_per_s']:>10,.0f} chars/s   bare {r['bare_reference']:<7} "
                  f"{r['bare_chars_per_s']:>10,.0f} chars/s   trainer/bare {r['trainer_over_bare']:.2f}   "
                  f"(rounds {min(r['pair_ratios']):.2f}-{max(r['pair_ratios']):.2f})", flush=True)

    by_cell = {r["cell"]: r for r in results}
    ratios = {f"{c} trainer/bare": by_cell[c]["trainer_over_bare"] for c in by_cell}
    if "peephole" in by_cell and "lstm" in by_cell:
        ratios["peephole/lstm"] = by_cell["peephole"]["trainer_over_bare"] / by_cell["lstm"]["trainer_over_bare"]
    print("\nratios:")
    verdicts = {}
    for name, value in ratios.items():
        target = TARGETS.get(name)
        if target is not None:
            verdicts[name] = value >= target
        mark = "" if target is None else f"   target >= {target:.2f}: {'met' if value >= target else 'MISSED'}"
        print(f"  {name:<22} {value:.2f}{mark}")

    if args.json:
        shape = {k: getattr(args, k) for k in ("hidden", "layers", "embedding", "batch_size", "seq_len")}
        report = {"machine": info, "corpus": str(corpus_path),
                  "shape": {**shape, "vocab_size": corpus.vocab.size, "dropout": DROPOUT},
                  "seconds_per_loop": args.seconds, "rounds": args.rounds, "quick": args.quick,
                  "results": results, "ratios": ratios, "targets": TARGETS, "targets_met": verdicts}
        write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
