"""Sampling speed: charnet's engine against the naive loop and the weight-bandwidth bound.

    python -m bench.sample_throughput                  # the bundled model
    python -m bench.sample_throughput --checkpoint runs/x --json bench/results/sample.json

Measured in one run, interleaved, so the machine's noise hits both sides alike:
- naive: the model's own forward (nn.LSTM & co.) called once per character in eager
  PyTorch, then softmax and multinomial: what a first char-rnn port does;
- charnet single stream: `Engine.generate`, one sequence, with the fused step (the
  element-wise part compiled, `charnet.inference.fused_cells`) and with the fallback (the same
  in PyTorch ops), alternating;
- bound: bytes of weights one step must read, divided by the matrix-vector bandwidth
  measured on a matrix of the same size (so it sees the same caches);
- batched: aggregate chars/s of 1, 8, 64 and 256 sequences generated together, fused and
  fallback;
- constrained: 1 and 64 streams held to a JSON Schema (`RECORDS`, long enough that
  every stream runs to its length), against the same streams unconstrained;
- exported: the same model's ONNX export (`charnet export --format web`), one stream,
  stepped by onnxruntime from Python on the CPU and by onnxruntime-web (WebAssembly, one
  thread) in headless Chromium, where Playwright and Chromium are installed.
Targets (the sampling and serving-throughput issues): single stream >= 5x naive and
>= 50% of the bound;
64 streams >= 20x the single-stream aggregate. Structured output: a JSON-Schema
constraint keeps >= 75% of the unconstrained chars/s at 64 streams.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine, untrained_lstm, write_json
from bench.flops import mv_gbps
from charnet.errors import ConfigError
from charnet.inference.engine import Engine


def engine_for(spec: str | None, fused: bool | None = None) -> tuple[Engine, str]:
    """The checkpoint to measure: the one given, else the bundled model, else an
    untrained model of the default shape (the same speed; the text is noise). `fused`:
    the kernel's element-wise path (`Engine`)."""
    from charnet.checkpoint import Checkpoint, find, load_checkpoint

    if spec:
        return Engine(load_checkpoint(find(spec)), fused=fused), spec
    try:
        return Engine(load_checkpoint(find("shakespeare")), fused=fused), "shakespeare (bundled)"
    except Exception:  # no bundled model in this checkout
        model, vocab = untrained_lstm()
        checkpoint = Checkpoint(path=Path("untrained"), model=model, vocab=vocab, config={})
        return Engine(checkpoint, fused=fused), "untrained 2x512 lstm"


@torch.no_grad()
def naive(engine: Engine, chars: int, seed: int = 0) -> float:
    """chars/s of the eager per-character loop."""
    model = engine.model
    torch.manual_seed(seed)
    x = torch.tensor([[int(engine.vocab.encode("\n")[0])]])
    state = None
    start = time.perf_counter()
    for _ in range(chars):
        logits, state = model(x, state)
        probs = torch.softmax(logits[0, -1], dim=-1)
        x = torch.multinomial(probs, 1).view(1, 1)
    return chars / (time.perf_counter() - start)


RECORDS = {"type": "array", "minItems": 1000, "items": {
    "type": "object", "additionalProperties": False, "required": ["name", "rank", "age", "seat"],
    "properties": {"name": {"type": "string", "maxLength": 16}, "rank": {"enum": ["duke", "earl", "knight"]},
                   "age": {"type": "integer", "minimum": 16, "maximum": 90},
                   "seat": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}}
"""A JSON Schema of nested objects, enums, number ranges and free strings, whose
instances are longer than any measurement, so no stream ends early."""


def charnet_rate(engine: Engine, chars: int, streams: int = 1, seed: int = 0, constraint: dict | None = None) -> float:
    """Aggregate chars/s of `streams` sequences generated together, constrained or not."""
    start = time.perf_counter()
    outs = engine.generate("\n", max_chars=chars, seed=seed, num_samples=streams, constraint=constraint)
    elapsed = time.perf_counter() - start
    return sum(o.completion_tokens for o in (outs if isinstance(outs, list) else [outs])) / elapsed


def constrained(engine: Engine, chars: int, rounds: int, streams: tuple[int, ...] = (1, 64)) -> dict:
    """chars/s with and without the `RECORDS` constraint, alternating run by run (this
    machine's speed drifts over minutes), medians."""
    out = {}
    json_schema = {"json": RECORDS}
    for n in streams:
        free, held = [], []
        for r in range(rounds):
            free.append(charnet_rate(engine, chars, n, seed=r))
            held.append(charnet_rate(engine, chars, n, seed=r, constraint=json_schema))
        f, h = statistics.median(free), statistics.median(held)
        out[str(n)] = {"free_chars_per_s": f, "json_chars_per_s": h, "ratio": h / f}
    return out


def exported(engine: Engine, chars: int, rounds: int) -> dict:
    """Single-stream chars/s of the model's export: onnxruntime in Python, and
    onnxruntime-web in headless Chromium (or why either was not measured)."""
    from bench.browser import chromium, generate_in_page, missing, open_export, static_server
    from charnet.errors import CharnetError
    from charnet.export.onnx import require

    try:
        require("onnx", "onnxscript", "onnxruntime")
    except CharnetError as e:
        return {"skipped": str(e)}
    from charnet.export.runtime import OnnxModel
    from charnet.export.web import export_web

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        export_web(engine.checkpoint, site)
        model = OnnxModel.open(site / "model", threads=torch.get_num_threads())
        model.generate("\n", max_chars=20)  # warm up
        runs = []
        for r in range(rounds):
            start = time.perf_counter()
            model.generate("\n", max_chars=chars, seed=r)
            runs.append(chars / (time.perf_counter() - start))
        out["onnxruntime_chars_per_s"] = statistics.median(runs)
        reason = missing()
        if reason:
            out["browser_skipped"] = reason
            return out
        with static_server(site) as url, chromium(Path(tmp) / "profile") as context:
            page = open_export(context, url)
            generate_in_page(page, prompt="\n", length=20)  # warm up
            out["browser_chars_per_s"] = statistics.median(
                generate_in_page(page, prompt="\n", seed=r, length=chars, temperature=1.0).chars_per_s
                for r in range(rounds))
    return out


def bandwidth_bound(engine: Engine, repeats: int = 200) -> dict:
    """Weights read per step, the matrix-vector bandwidth on a matrix of that size, and
    the steps per second that bandwidth allows."""
    step_bytes = engine.kernel.weight_bytes()
    side = int((step_bytes / 4) ** 0.5)
    gbps = mv_gbps(side, side, repeats)
    return {"bytes_per_step": step_bytes, "mv_gb_per_s": gbps, "bound_chars_per_s": gbps * 1e9 / step_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint path or name [default: the bundled model]")
    parser.add_argument("--chars", type=int, default=2000, help="characters per single-stream measurement")
    parser.add_argument("--batch-chars", type=int, default=300, help="characters per stream in batched runs")
    parser.add_argument("--streams", default="1,8,64,256", help="batch sizes to measure")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--threads", type=int, help="torch threads [default: torch's]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny counts, one round")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.chars, args.batch_chars, args.rounds, args.streams = 100, 20, 1, "1,8"
    engine, label = engine_for(args.checkpoint)
    fallback = Engine(engine.checkpoint, fused=False)
    cfg = engine.model.config
    step = "fused" if engine.kernel.fused else "fallback (the fused step is not available here)"
    print(f"model: {label}: {cfg.cell} {cfg.layers}x{cfg.hidden}, {engine.model.num_parameters():,} parameters; "
          f"{torch.get_num_threads()} threads; {engine.kernel.mm_dtype} products; {step} step")

    for e in (engine, fallback):
        charnet_rate(e, 50)  # warm up: buffers, caches, compiled code
    naive(engine, 20)
    naive_runs, single_runs, fallback_runs = [], [], []
    for r in range(args.rounds):
        naive_runs.append(naive(engine, max(args.chars // 4, 20), seed=r))
        single_runs.append(charnet_rate(engine, args.chars, seed=r))
        fallback_runs.append(charnet_rate(fallback, args.chars, seed=r))
    naive_cps, single_cps = statistics.median(naive_runs), statistics.median(single_runs)
    fallback_cps = statistics.median(fallback_runs)
    bound = bandwidth_bound(engine, 20 if args.quick else 200)
    print(f"naive eager loop      {naive_cps:10,.0f} chars/s")
    print(f"charnet single stream {single_cps:10,.0f} chars/s   {single_cps / naive_cps:5.1f}x naive (target >= 5x)")
    print(f"  fallback step       {fallback_cps:10,.0f} chars/s   the fused step is {single_cps / fallback_cps:.2f}x it")
    print(f"bandwidth bound       {bound['bound_chars_per_s']:10,.0f} chars/s   ({bound['bytes_per_step'] / 1e6:.1f} MB "
          f"per step at {bound['mv_gb_per_s']:.1f} GB/s); charnet reaches "
          f"{100 * single_cps / bound['bound_chars_per_s']:.0f}% (target >= 50%), the fallback "
          f"{100 * fallback_cps / bound['bound_chars_per_s']:.0f}%")

    batched, batched_fallback = {}, {}
    for n in (int(s) for s in args.streams.split(",")):
        fused_runs, aten_runs = [], []
        for r in range(args.rounds):
            fused_runs.append(charnet_rate(engine, args.batch_chars, n, seed=r))
            aten_runs.append(charnet_rate(fallback, args.batch_chars, n, seed=r))
        batched[n], batched_fallback[n] = statistics.median(fused_runs), statistics.median(aten_runs)
    base = batched.get(1, single_cps)
    print("streams  aggregate chars/s  vs 1 stream  fallback chars/s  fused vs fallback")
    for n, cps in batched.items():
        print(f"{n:7d}  {cps:17,.0f}  {cps / base:10.1f}x  {batched_fallback[n]:16,.0f}  "
              f"{cps / batched_fallback[n]:16.2f}x" + ("  (target >= 20x vs 1)" if n == 64 else ""))

    try:
        held = constrained(engine, args.batch_chars, 1 if args.quick else 2 * args.rounds + 1,
                           (1, 8) if args.quick else (1, 64))
    except ConfigError as e:  # a vocabulary without the characters JSON needs
        held = {}
        print(f"JSON Schema constraint: not measured ({e})")
    if held:
        print("streams  unconstrained  JSON Schema  ratio")
    for n, row in held.items():
        print(f"{n:>7}  {row['free_chars_per_s']:13,.0f}  {row['json_chars_per_s']:11,.0f}  {row['ratio']:5.2f}x"
              + ("  (target >= 0.75x)" if n == "64" else ""))

    onnx = exported(engine, args.chars, args.rounds)
    for key, name in (("onnxruntime_chars_per_s", "onnxruntime (Python, CPU)"),
                      ("browser_chars_per_s", "onnxruntime-web (Chromium)")):
        if key in onnx:
            print(f"{name:26} {onnx[key]:10,.0f} chars/s   {onnx[key] / single_cps:5.2f}x charnet's single stream")
    for key in ("skipped", "browser_skipped"):
        if key in onnx:
            print(f"export: not measured: {onnx[key]}")

    results = {"machine": machine(), "model": label, "shape": cfg.to_dict(), "naive_chars_per_s": naive_cps,
               "products": str(engine.kernel.mm_dtype).removeprefix("torch."), "fused": engine.kernel.fused,
               "single_chars_per_s": single_cps, "single_vs_naive": single_cps / naive_cps, **bound,
               "single_vs_bound": single_cps / bound["bound_chars_per_s"],
               "batched_chars_per_s": batched, "batched_vs_single": {n: c / base for n, c in batched.items()},
               "fallback": {"single_chars_per_s": fallback_cps,
                            "single_vs_bound": fallback_cps / bound["bound_chars_per_s"],
                            "batched_chars_per_s": batched_fallback},
               "fused_vs_fallback": {"1": single_cps / fallback_cps,
                                     **{str(n): batched[n] / batched_fallback[n] for n in batched}},
               "constrained": held, "exported": onnx,
               "rounds": {"naive": naive_runs, "single": single_runs, "fallback": fallback_runs}}
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
