"""Model quality in a fixed wall-clock budget: validation loss on tinyshakespeare.

    python -m bench.quality                          # lstm, gru, peephole; 15 minutes each on CPU
    python -m bench.quality --cells lstm --budget 5m --set lstm.hidden=384 --json q.json
    python -m bench.quality --quick --budget 20s     # a smoke run: a tiny lstm

Each cell is trained by the real `charnet train` (a subprocess, `--max-time BUDGET`),
one after another so no run steals the others' cores, and its run directory is read
back: metrics.jsonl gives the loss against wall time (periodic validation on the
first `eval_chars` of the split, and training loss), and last/config.json the loss on
the whole validation split scored once the budget is spent, which is the figure
reported. Wall time is the trainer's clock (periodic evaluations included; start-up
and the final scoring not).

Corpus: ``../shared/corpora/tinyshakespeare.txt`` beside the repository root (1,115,394
characters; `--corpus` for another), split as nanoGPT's shakespeare_char splits it:
the first 90% trains, the last 10% validates (`--val-fraction 0.1`; nanoGPT rounds the
boundary the other way, so its validation split is one character longer). nanoGPT
estimates its validation loss on random 256-character blocks; charnet scores every
validation character once, the state carried across windows.

References: nanoGPT shakespeare_char reaches 1.4697 nats/char (a 10.7M-parameter
Transformer, about 3 minutes on one A100) and about 1.88 with its CPU recipe (a small
Transformer, about 3 minutes on a laptop). Targets: <= 1.38 nats/char within 15
minutes on a 2-core CPU for the best run; the automatic defaults within 0.03 of it; every
cell's sized recipe better than today's; <= 1.33 within 10 minutes on one GPU (run with `--device
cuda` and `--gpu-budget`, default 10m, when CUDA is present; skipped otherwise).

Hyperparameters (`--set KEY=VALUE` for every cell, `--set CELL.KEY=VALUE` for one, and
`--gpu-set` likewise for the CUDA runs) default to CPU_DEFAULTS and GPU_DEFAULTS below.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import ROOT, machine, tinyshakespeare, write_json
from bench.figures import QUALITY_CELLS
from charnet.device import native_bf16

TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
REFERENCES = {"nanogpt_gpu": 1.4697, "nanogpt_cpu": 1.88}
TARGETS = {"cpu": {"val_loss": 1.38, "budget_s": 900}, "cuda": {"val_loss": 1.33, "budget_s": 600}}

# A starting point for 15 minutes on 2 CPU cores, the same for every cell so their
# losses compare at one shape (the lead tunes these on a quiet machine). A 2x512 lstm
# costs ~20 MFLOP per training character (bench.flops), so at a few thousand chars/s
# 15 minutes buys 2-3 epochs of the 1 MB split; dropout 0.2 because even that overfits
# a 3.4M-parameter model late in the run. One step is 8,192 characters, a few seconds
# on 2 cores: scoring 20,000 validation characters (plus saving last/) every 40 steps
# gives a curve point every minute or two for ~3% of the budget.
# bf16 autocast where the CPU has native bf16: 1.7-2x the characters in the same time.
CPU_DEFAULTS = {"layers": 2, "hidden": 512, "embedding": 128, "dropout": 0.2, "seq_len": 128, "batch_size": 64,
                "lr": 2e-3, "warmup": 100, "eval_every": 40, "eval_chars": 20_000,
                "precision": "bfloat16" if native_bf16(torch.device("cpu")) else "float32"}
CPU_PER_CELL: dict[str, dict] = {"lstm": {}, "gru": {}, "peephole": {}}
# The recipes (--recipes): "today", the fixed shape above without AWD-LSTM's
# regularisers, as charnet trained before they existed; "sized", `charnet train --model
# CELL` with no shape given, so the automatic sizing (charnet.training.sizing) chooses
# shape, dropout, weight drop and batch; "auto", a plain `charnet train CORPUS
# --max-time BUDGET` (the default cell, sized), run once. Sized and auto runs get only
# the curve's bookkeeping (eval_every, eval_chars) and the machine's precision.
RECIPES = ("today", "sized", "auto")
BOOKKEEPING = ("eval_every", "eval_chars", "precision")
# On a GPU the same 10 minutes buys ~100x the characters: a wider model with more
# dropout, longer windows and larger batches. Untested starting point: no GPU was at
# hand when it was written.
GPU_DEFAULTS = {"layers": 2, "hidden": 1024, "embedding": 256, "dropout": 0.35, "seq_len": 256, "batch_size": 128,
                "lr": 2e-3, "warmup": 200, "eval_every": 200, "eval_chars": 111_539}
GPU_PER_CELL: dict[str, dict] = {"lstm": {}, "gru": {}, "peephole": {}}
# --quick: a model that trains visibly in seconds, to exercise the machinery.
QUICK = {"layers": 1, "hidden": 128, "embedding": 32, "dropout": 0.0, "seq_len": 64, "batch_size": 16,
         "lr": 1e-2, "warmup": 10, "eval_every": 10, "eval_chars": 4_000}

TRAIN_CURVE_POINTS = 200  # training-loss points kept per run (the log has one per 10 steps)


def parse_sets(items: list[str], cells: list[str]) -> dict[str, dict]:
    """``KEY=VALUE`` (every cell) and ``CELL.KEY=VALUE`` (one) into per-cell overrides."""
    out: dict[str, dict] = {cell: {} for cell in cells}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE or CELL.KEY=VALUE")
        cell, dot, name = key.rpartition(".")
        if name not in CPU_DEFAULTS:
            raise SystemExit(f"--set {item!r}: {name!r} is not one of {', '.join(CPU_DEFAULTS)}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        for target in ([cell] if dot else cells):
            if target in out:
                out[target][name] = parsed
    return out


def train_command(corpus: Path, cell: str | None, device: str, budget_s: float, hp: dict, out: Path) -> list[str]:
    """The `charnet train` command of one run; `cell` None leaves the cell to charnet."""
    args = [sys.executable, "-m", "charnet", "train", str(corpus), *(["--model", cell] if cell else []),
            "--device", device, "--max-time", f"{budget_s:g}s", "--val-fraction", "0.1", "--out", str(out), "--force"]
    for key, value in hp.items():
        flag = f"--{key.replace('_', '-')}"
        args += ([flag] if value is True else [flag.replace("--", "--no-", 1)] if value is False else [flag, str(value)])
    return args


def read_run(run: Path) -> dict:
    """The curves and final figures of a finished run directory."""
    records = []
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                break
    val = [{"elapsed_s": r["elapsed_s"], "step": r["step"], "val_loss": r["val_loss"]}
           for r in records if "val_loss" in r]
    train = [[r["elapsed_s"], r["train_loss"]] for r in records if "train_loss" in r]
    stride = max(1, len(train) // TRAIN_CURVE_POINTS)
    speeds = sorted(r["chars_per_s"] for r in records[1:] if "chars_per_s" in r)  # the first window warms up
    config = json.loads((run / "last" / "config.json").read_text(encoding="utf-8")) \
        if (run / "last" / "config.json").exists() else {}
    m, training = config.get("metrics", {}), config.get("training", {})
    recipe = {k: training.get(k) for k in ("seq_len", "batch_size", "lr", "weight_drop", "locked_dropout",
                                           "input_dropout", "embed_dropout", "ar", "tar") if k in training}
    return {"recipe_settings": recipe, "final_val_loss": m.get("val_loss"), "final_val_bpc": m.get("val_bpc"), "elapsed_s": m.get("elapsed_s"),
            "steps": m.get("step"), "epochs": m.get("epoch"), "best_periodic_val_loss": m.get("best_val_loss"),
            "unigram_bpc": m.get("unigram_bpc"), "model": config.get("model"),
            "train_chars_per_s": speeds[len(speeds) // 2] if speeds else None,
            "val_curve": val, "train_curve": train[::stride]}


def parameters(model: dict | None) -> int | None:
    if not model:
        return None
    from charnet.config import ModelConfig
    from charnet.model import CharRNN

    return CharRNN(ModelConfig.from_dict(model)).num_parameters()


def run_cell(corpus: Path, name: str, cell: str | None, device: str, budget_s: float, hp: dict, out: Path) -> dict:
    """Train run `name` (`cell` None: charnet's default) and read it back."""
    run = out / f"{name.replace(' (', '-').replace(' ', '-').rstrip(')')}-{device}"
    run.mkdir(parents=True, exist_ok=True)
    command = train_command(corpus, cell, device, budget_s, hp, run)
    print(f"quality: training {name} on {device} for {budget_s:g}s: {' '.join(command[1:])}", flush=True)
    start = time.monotonic()
    with open(run / "train.log", "w", encoding="utf-8") as log:
        try:
            # Generous: the budget, start-up, and scoring the whole split at the end.
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  timeout=budget_s * 1.5 + 600).returncode
        except subprocess.TimeoutExpired:
            code = None
            print(f"\nbench.quality: stopped after {budget_s * 1.5 + 600:g} s", file=log, flush=True)
    result = {"run": name, "device": device, "budget_s": budget_s, "hparams": hp, "command": command[1:],
              "returncode": code, "wall_s": time.monotonic() - start, **read_run(run)}
    result["parameters"] = parameters(result["model"])
    result["cell"] = (result["model"] or {}).get("cell", cell)
    if code != 0 or result["final_val_loss"] is None:
        result["error"] = (run / "train.log").read_text(encoding="utf-8", errors="replace")[-2000:]
        print(f"quality: {name} on {device} failed (exit {code}):\n{result['error']}", flush=True)
    else:
        print(f"quality: {name} on {device}: val {result['final_val_loss']:.4f} nats/char "
              f"({result['final_val_bpc']:.4f} bits/char) after {result['elapsed_s']:.0f}s, {result['steps']} steps, "
              f"{result['epochs']:.2f} epochs, {result['train_chars_per_s'] or 0:,.0f} chars/s", flush=True)
    return result


def finished(earlier: dict, device: str, name: str, command: list[str]) -> dict | None:
    """Run `name` from an earlier results file when it finished with the same command
    (its run directory aside) on the same machine."""
    run = earlier.get(device, {}).get(name)
    if not run or run.get("returncode") != 0 or run.get("final_val_loss") is None:
        return None
    same = lambda cmd: [a for i, a in enumerate(cmd) if "--out" not in cmd[i - 1: i + 1]]  # noqa: E731
    if same(run["command"]) != same(command[1:]) or earlier.get("machine", {}).get("cpu") != machine().get("cpu"):
        return None
    return {**run, "kept_from_earlier_invocation": True}


def runs(recipes: list[str], cells: list[str], defaults: dict, per_cell: dict, sets: dict):
    """(name, cell or None, hyperparameters) of every run: today's recipe keeps the cell's
    name (as before recipes existed), the others say theirs."""
    from charnet.config import ModelConfig

    default_cell = ModelConfig(vocab_size=1).cell
    for recipe in recipes:
        if recipe == "auto":
            yield f"auto ({default_cell})", None, {k: defaults[k] for k in BOOKKEEPING if k in defaults}
            continue
        for cell in cells:
            if recipe == "sized" and cell == default_cell and "auto" in recipes:
                continue  # the auto run is this one
            hp = {**defaults, **per_cell.get(cell, {}), **sets.get(cell, {})}
            if recipe == "today":
                yield cell, cell, hp
            else:
                yield f"{cell} sized", cell, {k: v for k, v in hp.items() if k in BOOKKEEPING or k in sets.get(cell, {})}


def describe_corpus(path: Path) -> dict:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return {"path": str(path), "bytes": len(data), "chars": len(data.decode("utf-8", "replace")), "sha256": sha,
            "is_tinyshakespeare": sha == TINYSHAKESPEARE_SHA256}


def main() -> None:
    epilog = "\n".join(f"{name}: " + " ".join(f"{k}={v}" for k, v in hp.items())
                       for name, hp in (("CPU defaults", CPU_DEFAULTS), ("GPU defaults", GPU_DEFAULTS), ("--quick", QUICK)))
    parser = argparse.ArgumentParser(description=__doc__, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="15m", help="training time per cell on the CPU [default: 15m]")
    parser.add_argument("--gpu-budget", default="10m", help="training time per cell on CUDA [default: 10m]")
    parser.add_argument("--cells", help="cells to train [default: lstm,gru,peephole; lstm with --quick]")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"recipes to run, of {', '.join(RECIPES)} [default: all; today with --quick]")
    parser.add_argument("--continue-from", type=Path, metavar="JSON",
                        help="reuse the runs of an earlier --json file that finished with the same settings")
    parser.add_argument("--corpus", type=Path, help="[default: ../shared/corpora/tinyshakespeare.txt]")
    parser.add_argument("--set", action="append", default=[], metavar="[CELL.]KEY=VALUE",
                        help=f"override a CPU hyperparameter; keys: {', '.join(CPU_DEFAULTS)}")
    parser.add_argument("--gpu-set", action="append", default=[], metavar="[CELL.]KEY=VALUE",
                        help="override a CUDA hyperparameter")
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA runs even when CUDA is present")
    parser.add_argument("--out", type=Path, help="keep the run directories here [default: a temporary folder]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a tiny model, lstm only")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    from charnet.config import parse_duration

    budget, gpu_budget = parse_duration(args.budget), parse_duration(args.gpu_budget)
    cells = args.cells.split(",") if args.cells else ["lstm"] if args.quick else list(QUALITY_CELLS)
    recipes = ("today" if args.quick and args.recipes == ",".join(RECIPES) else args.recipes).split(",")
    if unknown := set(recipes) - set(RECIPES):
        raise SystemExit(f"--recipes: {', '.join(sorted(unknown))} is not one of {', '.join(RECIPES)}")
    corpus = args.corpus or tinyshakespeare()
    results: dict = {"machine": machine(), "quick": args.quick, "budget_s": budget, "cells": cells, "recipes": recipes,
                     "references": REFERENCES, "targets": TARGETS, "cpu": {}, "cuda": {}}
    if corpus is None or not corpus.is_file():
        results["skipped"] = f"corpus not available: {corpus or '../shared/corpora/tinyshakespeare.txt'}"
        print(f"quality: skipped, {results['skipped']}")
    else:
        results["corpus"] = describe_corpus(corpus)
        cpu_sets, gpu_sets = parse_sets(args.set, cells), parse_sets(args.gpu_set, cells)
        plan = [("cpu", budget, CPU_DEFAULTS, CPU_PER_CELL, cpu_sets)]
        if args.no_gpu:
            results["cuda_skipped"] = "--no-gpu given"
        elif not torch.cuda.is_available():
            results["cuda_skipped"] = "no CUDA device on this machine"
        else:
            plan.append(("cuda", budget if args.quick else gpu_budget, GPU_DEFAULTS, GPU_PER_CELL, gpu_sets))
            results["gpu_budget_s"] = plan[-1][1]
        if "cuda_skipped" in results:
            print(f"quality: CUDA runs skipped: {results['cuda_skipped']}")
        runs_dir = args.out or Path(tempfile.mkdtemp(prefix="charnet-bench-quality-"))
        try:
            earlier = json.loads(args.continue_from.read_text(encoding="utf-8")) if args.continue_from else {}
            for device, seconds, defaults, per_cell, sets in plan:
                for name, cell, hp in runs(recipes, cells, QUICK if args.quick else {**defaults}, per_cell, sets):
                    done = finished(earlier, device, name, train_command(corpus, cell, device, seconds, hp, runs_dir))
                    if done:
                        print(f"quality: {name} on {device}: kept from {args.continue_from}", flush=True)
                    results[device][name] = done or run_cell(corpus, name, cell, device, seconds, hp, runs_dir)
                    if args.json:  # after every run: a long benchmark stopped halfway keeps what it measured
                        write_json(args.json, results)
        finally:
            if args.out is None:
                shutil.rmtree(runs_dir, ignore_errors=True)
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    failed = [f"{d}/{c}" for d in ("cpu", "cuda") for c, r in results[d].items() if r.get("error")]
    if failed:
        raise SystemExit(f"quality: runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
