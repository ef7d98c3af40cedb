"""This machine's measured float32 matmul FLOP/s and matrix-vector bandwidth, and the
FLOPs a character costs each cell: the yardsticks training and sampling speed are
reported against.

    python -m bench.flops [--quick] [--json PATH]

Measured (median of interleaved rounds, torch's default thread count):
- matmul: a large square ``torch.mm`` (the machine's practical peak), and the products
  one training step of the default model runs: the recurrent step (B, H) x (H, gH), the
  input projection of every window position at once (B*T, E) x (E, gH), and the output
  layer (B*T, H) x (H, V);
- matrix-vector bandwidth: ``torch.mv`` reads its matrix once per call, so matrix bytes
  over seconds is the memory bandwidth sampling sees; measured on a matrix that fits
  in the L2 cache and on one 4x the last-level cache (main memory).

FLOPs per character: `charnet.flops` (the cost model `charnet train` sizes models by).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.common import machine, write_json
from charnet.flops import FORMULA, GATES, flops_per_char


def cache_sizes() -> dict:
    """Per-level data cache sizes in bytes from sysfs (L1d, L2, L3); defaults when the
    kernel does not say (1 MB L2, 32 MB L3, typical of a server core)."""
    sizes = {"L2": 1 << 20, "L3": 32 << 20}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        sizes[f"L{level}"] = int(text.rstrip("KMG")) * unit
    return dict(sorted(sizes.items()))


def _time(fn, repeats: int) -> float:
    """Seconds per call of `fn`, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def matmul_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """GFLOP/s of (m, k) x (k, n) float32 products: 2mkn FLOPs each."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    return 2 * m * k * n / _time(lambda: torch.mm(a, b, out=out), repeats) / 1e9


def mv_gbps(rows: int, cols: int, repeats: int = 50) -> float:
    """GB/s of float32 matrix-vector products: the matrix's bytes read per call."""
    a, x = torch.randn(rows, cols), torch.randn(cols)
    out = torch.empty(rows)
    return rows * cols * 4 / _time(lambda: torch.mv(a, x, out=out), repeats) / 1e9


def trainer_shapes(batch: int, seq_len: int, hidden: int, embedding: int, vocab: int, gates: int = 4) -> dict:
    """(m, k, n) of the products one training step of that model runs."""
    return {"recurrent_step": (batch, hidden, gates * hidden),
            "input_projection": (batch * seq_len, embedding, gates * hidden),
            "head": (batch * seq_len, hidden, vocab)}


def measure(quick: bool = False, rounds: int = 3, size: int = 2048, batch: int = 64, seq_len: int = 128,
            hidden: int = 512, embedding: int = 128, vocab: int = 66) -> dict:
    """Every figure above, interleaved over `rounds`; the median of each."""
    if quick:
        rounds, size = 1, 1024
    caches = cache_sizes()
    l2_side = int((caches["L2"] / 2 / 4) ** 0.5)  # half the L2: stays resident
    dram_side = int((caches.get("L3", caches["L2"]) * (2 if quick else 4) / 4) ** 0.5)
    products = {"square": (size, size, size), **trainer_shapes(batch, seq_len, hidden, embedding, vocab)}
    mv_shapes = {"cache_resident": (l2_side, l2_side), "beyond_cache": (dram_side, dram_side)}
    mm_runs = {name: [] for name in products}
    mv_runs = {name: [] for name in mv_shapes}
    for _ in range(rounds):
        for name, (m, k, n) in products.items():
            work = 2 * m * k * n
            mm_runs[name].append(matmul_gflops(m, k, n, repeats=max(2, min(200, int(2e10 / work)))))
        for name, (r, c) in mv_shapes.items():
            mv_runs[name].append(mv_gbps(r, c, repeats=max(5, min(2000, int(2e9 / (r * c * 4))))))
    matmul = {name: {"shape": list(products[name]), "gflops": statistics.median(runs), "rounds": runs}
              for name, runs in mm_runs.items()}
    mv = {name: {"shape": list(mv_shapes[name]), "bytes": mv_shapes[name][0] * mv_shapes[name][1] * 4,
                 "gb_per_s": statistics.median(runs), "rounds": runs} for name, runs in mv_runs.items()}
    return {"caches": caches, "threads": torch.get_num_threads(), "matmul": matmul, "mv": mv,
            "peak_gflops": matmul["square"]["gflops"], "trainer_step_gflops": matmul["recurrent_step"]["gflops"],
            "model_shape": {"batch": batch, "seq_len": seq_len, "hidden": hidden, "embedding": embedding,
                            "vocab": vocab},
            "flops_per_char": {cell: flops_per_char(cell, 2, hidden, embedding, vocab) for cell in GATES},
            "formula": FORMULA}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="side of the square matmul [default: 2048]")
    parser.add_argument("--batch", type=int, default=64, help="the trainer's batch size [default: 64]")
    parser.add_argument("--seq-len", type=int, default=128, help="the trainer's window [default: 128]")
    parser.add_argument("--hidden", type=int, default=512, help="hidden units [default: 512]")
    parser.add_argument("--embedding", type=int, default=128, help="embedding size [default: 128]")
    parser.add_argument("--vocab", type=int, default=66, help="vocabulary size [default: 66, tinyshakespeare's]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--threads", type=int, help="torch threads [default: torch's]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: smaller matrices, one round")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.quick, args.rounds, args.size, args.batch, args.seq_len, args.hidden, args.embedding,
                     args.vocab)
    print(f"float32, {result['threads']} threads; caches: "
          + ", ".join(f"{k} {v / 2**10:g} KiB" for k, v in result["caches"].items()))
    for name, m in result["matmul"].items():
        print(f"mm {name:17s} {'x'.join(map(str, m['shape'])):>16s}  {m['gflops']:8.1f} GFLOP/s")
    for name, m in result["mv"].items():
        print(f"mv {name:17s} {m['bytes'] / 2**20:10.1f} MiB  {m['gb_per_s']:8.1f} GB/s")
    for cell, f in result["flops_per_char"].items():
        print(f"{cell:9s} 2x{args.hidden}: {f['training'] / 1e6:6.1f} MFLOP per training char; at the square matmul's "
              f"speed at most {result['peak_gflops'] * 1e9 / f['training']:,.0f} chars/s")
    print(FORMULA)
    if args.json:
        write_json(args.json, {"machine": machine(), **result, "quick": args.quick})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
