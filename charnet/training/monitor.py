"""What a training run shows and records: a rich progress bar, a JSONL metrics log,
TensorBoard scalars and sample texts (when tensorboard is installed) and a loss-curve PNG
at the end.

Only the main process of a distributed run monitors; the others get a `Monitor` with
``enabled=False``, whose methods do nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from charnet.units import LN2, bits


class Monitor:
    """Progress bar, metrics log and plots of one run directory."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, console: Console | None = None,
                 resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        # Progress and results go to stdout; stderr carries only warnings and the one-line
        # error a failed run ends with, so `2>err` captures exactly what went wrong.
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task = None
        self._writer = None
        self._last_val: float | None = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self._log = open(self.metrics_path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard is optional
                self._writer = None

    def _truncate_after(self, step: int) -> None:
        # A run killed after its last checkpoint logged steps it will now redo.
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                break  # a line cut short by the kill
        self.metrics_path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    # -- progress bar ---------------------------------------------------------------------

    def start(self, description: str, completed: float) -> None:
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=1.0, completed=completed, status="")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False)

    # -- records --------------------------------------------------------------------------

    def _write(self, record: dict[str, Any]) -> None:
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()

    def train(self, step: int, loss: float, lr: float, chars_per_s: float, progress: float, elapsed: float, epoch: float) -> None:
        if not self.enabled:
            return
        self._write({"step": step, "epoch": round(epoch, 4), "train_loss": loss, "train_bpc": bits(loss),
                     "lr": lr, "chars_per_s": round(chars_per_s, 1), "elapsed_s": round(elapsed, 2)})
        if self._writer:
            self._writer.add_scalar("train/loss", loss, step)
            self._writer.add_scalar("train/lr", lr, step)
            self._writer.add_scalar("train/chars_per_s", chars_per_s, step)
        if self._progress is not None:
            val = f" val {bits(self._last_val):.3f} bpc" if self._last_val is not None else ""
            self._progress.update(
                self._task, completed=min(progress, 1.0),
                description=f"step {step}",
                status=f"loss {loss:.3f} ({bits(loss):.3f} bpc){val} {chars_per_s:,.0f} chars/s",
            )

    def evaluation(self, step: int, val_loss: float, elapsed: float, best: bool, chars: int) -> None:
        if not self.enabled:
            return
        self._last_val = val_loss
        self._write({"step": step, "val_loss": val_loss, "val_bpc": bits(val_loss), "val_chars": chars,
                     "elapsed_s": round(elapsed, 2)})
        if self._writer:
            self._writer.add_scalar("val/loss", val_loss, step)
            self._writer.add_scalar("val/bpc", bits(val_loss), step)
        mark = "  (best)" if best else ""
        self.print(f"step {step}: val {val_loss:.4f} nats/char, {bits(val_loss):.4f} bits/char{mark}")

    def samples(self, step: int, texts: list[str], elapsed: float) -> None:
        """Samples drawn with the current weights: shown one line each (line breaks as
        ↵), kept whole in metrics.jsonl and as TensorBoard text."""
        if not self.enabled:
            return
        self._write({"step": step, "samples": texts, "elapsed_s": round(elapsed, 2)})
        if self._writer:
            # TensorBoard renders text as Markdown: a code block keeps it verbatim.
            self._writer.add_text("samples", "\n\n".join(f"    {t}".replace("\n", "\n    ") for t in texts), step)
        width = max(20, self.console.width - 8)
        shown = [t.replace("\n", "↵") for t in texts]
        self.print("\n".join([f"step {step} samples:"] + [f"  {i + 1}│ {t[:width]}" for i, t in enumerate(shown)]))

    def close(self) -> None:
        self.stop()
        if not self.enabled:
            return
        self._log.close()
        if self._writer:
            self._writer.close()

    # -- plot -----------------------------------------------------------------------------

    def plot(self, title: str) -> Path | None:
        """Write loss.png (train and validation loss against step); None if there is
        nothing to plot."""
        if not self.enabled or not self.metrics_path.exists():
            return None
        records = [json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines() if line]
        train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        if not train and not val:
            return None
        return plot_curves(self.run_dir / "loss.png", title, {"train": train, "validation": val}, "step")


def plot_curves(path: Path, title: str, series: dict[str, list[tuple[float, float]]], xlabel: str,
                ylabel: str = "loss (nats/char)", hline: tuple[float, str] | None = None) -> Path:
    """A PNG of loss curves with a bits/char axis on the right, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for label, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=label, marker="o" if len(points) < 30 else None, markersize=3)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    right = ax.secondary_yaxis("right", functions=(lambda n: n / LN2, lambda b: b * LN2))
    right.set_ylabel("bits/char")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
