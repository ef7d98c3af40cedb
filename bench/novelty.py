"""Novelty checks on a 100 MB corpus: the index built once, then each sample in milliseconds.

    python -m bench.novelty                 # a 100 MB corpus
    python -m bench.novelty --quick         # 5 MB

The corpus is generated from tinyshakespeare (`../shared/corpora/`): copies of its lines,
each copy shuffled by its own seed, so the text is as large as asked without being one
passage repeated. Measured, each in this run: building the running-text index (a suffix
array, `charnet.inference.novelty`) and the line index, opening them again from the
cache, and checking samples of 1,000 characters (running text) and 1,000 lines. The
reference is the same check without an index: for each position of a sample, the match
grown one character at a time with `bytes.find` over the corpus (a scan whenever the
longer string is not there), timed on the first `NAIVE_POSITIONS` positions of two
scrambled samples (short matches: its cheapest case) and scaled to their length.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from bench.common import machine, tinyshakespeare, write_json

SAMPLE_CHARS = 1000
SAMPLES = 20
LINES = 1000
NAIVE_POSITIONS = 20


def naive_seconds(data: bytes, sample: str, positions: int) -> float:
    """Seconds the index-free check takes on the first `positions` characters of
    `sample` (the previous match carried over, as the indexed check does)."""
    raw = sample.encode("utf-8")
    start, length = time.perf_counter(), 0
    for i in range(positions):
        while i + length < len(raw) and data.find(raw[i:i + length + 1]) >= 0:
            length += 1
        length = max(length - 1, 0)
    return time.perf_counter() - start


def build_corpus(path: Path, size: int) -> int:
    lines = tinyshakespeare().read_text(encoding="utf-8").splitlines()
    written, seed = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            random.Random(seed).shuffle(lines)
            text = "\n".join(lines) + "\n"
            f.write(text)
            written += len(text.encode())
            seed += 1
    return written


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from charnet.inference.novelty import Novelty

    if tinyshakespeare() is None:
        print("skipped: ../shared/corpora/tinyshakespeare.txt is not there")
        if args.json:
            write_json(args.json, {"machine": machine(), "skipped": "no ../shared/corpora/tinyshakespeare.txt"})
        return
    size = (5 if args.quick else 100) * 10**6
    with tempfile.TemporaryDirectory(prefix="charnet-novelty-") as tmp:
        corpus, cache = Path(tmp) / "corpus.txt", Path(tmp) / "cache"
        nbytes = build_corpus(corpus, size)
        data = corpus.read_bytes()
        scan_s = naive_seconds(data, "\x01", 1)  # one full scan: the byte is not in the text
        rng = random.Random(1)
        starts = [rng.randrange(len(data) - 4 * SAMPLE_CHARS) for _ in range(SAMPLES)]
        # Half copied from the corpus, half scrambled: both the long and the short matches.
        samples = [data[s:s + SAMPLE_CHARS].decode("utf-8", "ignore") for s in starts]
        samples = [t if i % 2 else "".join(rng.sample(t, len(t))) for i, t in enumerate(samples)]
        text = Novelty([corpus], cache=cache)
        _, build_s = timed(lambda: text.check(samples[:1]))
        reopened = Novelty([corpus], cache=cache)
        _, open_s = timed(lambda: reopened.check(samples[:1]))
        report, check_s = timed(lambda: reopened.check(samples))
        per_sample = check_s / len(samples)
        # On scrambled samples, whose short matches are the cheap case for the index-free check.
        naive = sum(naive_seconds(data, t, NAIVE_POSITIONS) * len(t) / NAIVE_POSITIONS for t in samples[0:4:2]) / 2
        lines = Novelty([corpus], documents="lines", cache=cache)
        items = [line for line in data[:2_000_000].decode("utf-8", "ignore").splitlines() if line][:LINES // 2]
        items += [f"{line} (new)" for line in items]
        _, line_build_s = timed(lambda: lines.check(items[:1]))
        line_report, line_check_s = timed(lambda: Novelty([corpus], documents="lines", cache=cache).check(items))
    result = {
        "machine": machine(), "corpus_bytes": nbytes, "linear_scan_s": scan_s,
        "text": {"build_s": build_s, "open_s": open_s, "sample_chars": SAMPLE_CHARS, "samples": len(samples),
                 "per_sample_s": per_sample, "naive_per_sample_s": naive, "naive_over_indexed": naive / per_sample,
                 "copied_longest": [m.longest for m in report.matches[1::2]],
                 "scrambled_longest": [m.longest for m in report.matches[0::2]]},
        "lines": {"build_s": line_build_s, "items": len(items), "check_s": line_check_s,
                  "fractions": line_report.fractions},
    }
    print(f"{nbytes / 1e6:.0f} MB: suffix array built in {build_s:.1f} s, reopened in {open_s * 1e3:.0f} ms; "
          f"a {SAMPLE_CHARS}-character sample checked in {per_sample * 1e3:.1f} ms, {naive / per_sample:,.0f}x faster "
          f"than without the index ({naive:.1f} s; one scan of the corpus {scan_s * 1e3:.1f} ms); line index built in {line_build_s:.1f} s, {len(items)} items checked "
          f"in {line_check_s * 1e3:.0f} ms")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
