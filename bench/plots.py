"""The report's PNG plots; each returns its path, or None when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path

from charnet.training.monitor import plot_curves


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    _pyplot().close(fig)
    return path


def quality(path: Path, data: dict | None, device: str, target: float) -> Path | None:
    """Validation loss (periodic, on the split's first eval_chars) against wall time."""
    runs = (data or {}).get(device, {})
    series = {cell + (f" ({r['parameters']:,} parameters)" if r.get("parameters") else ""):
              [(p["elapsed_s"], p["val_loss"]) for p in r["val_curve"]]
              for cell, r in runs.items() if r.get("val_curve")}
    if not series:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_curves(path, f"tinyshakespeare validation loss on {device}", series, "wall time (s)",
                       hline=(target, f"target {target:.2f}"))


def train(path: Path, cells: dict) -> Path | None:
    """Training chars/s per cell: charnet's trainer next to the bare PyTorch loop."""
    cells = {c: f for c, f in cells.items() if f.get("trainer") or f.get("bare")}
    if not cells:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    xs = range(len(cells))
    ax.bar([x - 0.2 for x in xs], [f.get("bare") or 0 for f in cells.values()], 0.4, label="bare PyTorch loop")
    ax.bar([x + 0.2 for x in xs], [f.get("trainer") or 0 for f in cells.values()], 0.4, label="charnet Trainer")
    ax.set_xticks(list(xs), list(cells))
    ax.set_ylabel("training chars/s")
    ax.set_title("Training throughput per cell")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _save(fig, path)


def sample(path: Path, data: dict | None) -> Path | None:
    """Aggregate sampling chars/s against the number of streams, with the naive loop
    and the single-stream bandwidth bound for scale."""
    batched = {int(k): v for k, v in ((data or {}).get("batched_chars_per_s") or {}).items()}
    if not batched:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ns = sorted(batched)
    ax.plot(ns, [batched[n] for n in ns], marker="o", label="charnet, aggregate")
    if data.get("naive_chars_per_s"):
        ax.axhline(data["naive_chars_per_s"], color="grey", linestyle=":", label="naive eager loop, 1 stream")
    if data.get("bound_chars_per_s"):
        ax.axhline(data["bound_chars_per_s"], color="grey", linestyle="--", label="bandwidth bound, 1 stream")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("streams sampled together")
    ax.set_ylabel("chars/s")
    ax.set_title("Sampling speed against batch size")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def serve(path: Path, rows: list[dict]) -> Path | None:
    """Aggregate chars/s of the server and its engine alone, and p99 time to first
    character, against concurrent clients."""
    rows = [r for r in rows if r.get("chars_per_s") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    clients = [r["clients"] for r in rows]
    ax.plot(clients, [r["chars_per_s"] for r in rows], marker="o", color="C0", label="server chars/s")
    engine = [(r["clients"], r["engine_chars_per_s"]) for r in rows if r.get("engine_chars_per_s")]
    if engine:
        ax.plot(*zip(*engine), marker="o", color="C0", linestyle=":", label="engine alone chars/s")
        ax.legend(loc="upper left")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("aggregate chars/s", color="C0")
    ax.grid(alpha=0.3, which="both")
    latency = [(r["clients"], r["ttfc_p99_ms"]) for r in rows if r.get("ttfc_p99_ms") is not None]
    if latency:
        right = ax.twinx()
        right.plot(*zip(*latency), marker="s", color="C1", label="p99 time to first char")
        right.axhline(50, color="C1", linestyle="--", linewidth=1)
        right.set_ylabel("p99 time to first char (ms)", color="C1")
    ax.set_title("charnet serve under load")
    return _save(fig, path)
