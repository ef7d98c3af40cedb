"""Fine-tuning against training from scratch, on text the bundled model never saw.

    python -m bench.finetune                   # 2 min fine-tuned, 2 min and 10 min from scratch
    python -m bench.finetune --quick           # a smoke run: seconds each

The corpus is `corpora/sonnets.txt` (Shakespeare's Sonnets, which `corpora/shakespeare.txt`
and so the bundled `shakespeare` model leave out). Three runs of the real `charnet train`,
one after another on the same machine, all of the bundled model's shape (2x512 lstm)
and with the same batch, window, dropout and evaluation settings:

- ``finetune``: ``--init-from shakespeare`` for FINETUNE_S (its default learning rate);
- ``scratch``: a fresh model for the same FINETUNE_S;
- ``scratch_long``: a fresh model for SCRATCH_LONG_S.

Each run's figure is the validation loss of its best checkpoint (the whole held-out
10% is scored at every evaluation: it is shorter than --eval-chars), and the final
weights' loss beside it. Target: fine-tuning for 2 minutes beats scratch for 10.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, machine, write_json

CORPUS = ROOT / "corpora" / "sonnets.txt"
PARENT = "shakespeare"
FINETUNE_S, SCRATCH_LONG_S = 120, 600
QUICK_S = (5, 10)
QUICK_SETTINGS = {"eval_every": 1}  # a curve point at every step, however few a loaded machine runs
# 86k training characters: 32 windows of 128 are 21 steps an epoch, an evaluation every
# 10 steps gives a curve point every few seconds; dropout 0.2 since every run overfits.
SETTINGS = {"batch_size": 32, "seq_len": 128, "dropout": 0.2, "eval_every": 10, "warmup": 20, "samples": 0}
TARGET = "finetune_beats_scratch_long"


def command(name: str, budget_s: float, out: Path, settings: dict) -> list[str]:
    args = [sys.executable, "-m", "charnet", "train", str(CORPUS), "--max-time", f"{budget_s:g}s", "--out", str(out),
            "--force"]
    args += ["--init-from", PARENT] if name == "finetune" else []
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def run(name: str, budget_s: float, out: Path, settings: dict) -> dict:
    cmd = command(name, budget_s, out, settings)
    print(f"-- {name}: {' '.join(cmd[3:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    config = json.loads((out / "last" / "config.json").read_text(encoding="utf-8"))
    metrics = config["metrics"]
    curve = [{"elapsed_s": r["elapsed_s"], "val_loss": r["val_loss"]}
             for r in map(json.loads, (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) if "val_loss" in r]
    record = {"budget_s": budget_s, "command": cmd[3:], "best_val_loss": metrics["best_val_loss"],
              "best_step": metrics["best_step"], "final_val_loss": metrics["val_loss"], "steps": metrics["step"],
              "elapsed_s": metrics["elapsed_s"], "lr": config["training"]["lr"], "curve": curve,
              "parent": config.get("parent")}
    print(f"   best {record['best_val_loss']:.4f} nats/char at step {record['best_step']}, final "
          f"{record['final_val_loss']:.4f}, {record['steps']} steps", flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="seconds per run: exercise the machinery")
    args = parser.parse_args()
    short, long = QUICK_S if args.quick else (FINETUNE_S, SCRATCH_LONG_S)
    settings = {**SETTINGS, **(QUICK_SETTINGS if args.quick else {})}
    with tempfile.TemporaryDirectory(prefix="charnet-finetune-") as tmp:
        runs = {name: run(name, budget, Path(tmp) / name, settings)
                for name, budget in (("finetune", short), ("scratch", short), ("scratch_long", long))}
    ratio = runs["finetune"]["best_val_loss"] / runs["scratch_long"]["best_val_loss"]
    result = {"machine": machine(), "corpus": {"path": str(CORPUS.relative_to(ROOT)), "chars": len(CORPUS.read_text())},
              "parent": PARENT, "settings": settings, "runs": runs, "finetune_over_scratch_long": ratio,
              TARGET: runs["finetune"]["best_val_loss"] < runs["scratch_long"]["best_val_loss"]}
    print(f"fine-tuned {short:g}s: {runs['finetune']['best_val_loss']:.4f}; scratch {short:g}s: "
          f"{runs['scratch']['best_val_loss']:.4f}; scratch {long:g}s: {runs['scratch_long']['best_val_loss']:.4f} "
          f"nats/char ({ratio:.3f}x)")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
