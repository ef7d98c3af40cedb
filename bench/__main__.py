"""The benchmark suite's entry point.

    python -m bench all [--quick] [--budget 15m] [--only NAME,...] [--out bench/results] [--report BENCHMARKS.md]
    python -m bench report RESULTS.json [--report BENCHMARKS.md] [--plots bench/results]

`all` runs the benchmarks (flops, encode, novelty, sample, train, serve, hostile, finetune,
quality; `--only` picks some), writes ``<out>/<date>-<machine>.json`` and turns it into the
report (with its plots in --out). `report` regenerates the report from a results file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import ROOT
from bench.runner import PARTS, run_all

DEFAULT_OUT = ROOT / "bench" / "results"
DEFAULT_REPORT = ROOT / "BENCHMARKS.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("all", help="run the benchmarks and write the results and the report")
    run.add_argument("--quick", action="store_true", help="smoke runs: small sizes, one round, a tiny model")
    run.add_argument("--budget", help="training time per cell for the quality runs on the CPU "
                     "[default: 15m; 20s with --quick]")
    run.add_argument("--gpu-budget", help="training time per cell for the quality runs on CUDA [default: 10m]")
    run.add_argument("--cells", help="cells for the quality runs [default: lstm,gru,peephole]")
    run.add_argument("--recipes", help="recipes for the quality runs [default: today,sized,auto]")
    run.add_argument("--quality-from", type=Path, metavar="JSON", help="reuse the quality runs of an earlier "
                     "`python -m bench.quality --json` file that finished with the same settings (a long run "
                     "resumed after an interruption)")
    run.add_argument("--only", help=f"comma-separated benchmarks to run, of: {', '.join(PARTS)} [default: all]")
    run.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the results JSON and the plots "
                     "[default: bench/results]")
    run.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="where to write the report "
                     "[default: BENCHMARKS.md at the repository root]")
    run.add_argument("--keep", type=Path, help="an earlier results JSON of this machine: the benchmarks this run "
                     "does not repeat (see --only) are carried over from it, marked with their commit and date")
    run.add_argument("--runs", type=Path, help="keep the quality runs' directories here [default: discarded]")
    run.add_argument("--timeout", type=float, default=1800, help="stop a benchmark (other than quality, bounded by "
                     "its budget) after this many seconds [default: 1800]")

    rep = sub.add_parser("report", help="write the report from a results JSON")
    rep.add_argument("results", type=Path, help="a results JSON written by `python -m bench all`")
    rep.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="[default: BENCHMARKS.md]")
    rep.add_argument("--plots", type=Path, help="folder for the plots [default: the results file's folder]")

    args = parser.parse_args(argv)
    if args.command == "all":
        try:
            return run_all(args)
        except KeyboardInterrupt:
            print("bench: interrupted; nothing written", file=sys.stderr)
            return 130
    from bench.report import write_report

    if not args.results.is_file():
        print(f"bench report: {args.results}: no such file", file=sys.stderr)
        return 2
    print(f"report: {write_report(args.results, args.report, args.plots or args.results.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
