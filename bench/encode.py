"""Corpus encoding speed and memory: `charnet.training.data.load_corpus`, cold and cached.

    python -m bench.encode                     # a 100 MB corpus (and a 25 MB one)
    python -m bench.encode --quick --json bench/results/encode.json

What it measures, on a corpus generated in a temporary folder from the bundled
corpora/shakespeare.txt with multilingual passages mixed in (accents, Greek, Cyrillic,
CJK, Arabic, Hebrew, Devanagari, emoji, combining marks), so the encoder sees real
Unicode and not only ASCII:
- cold: the first `load_corpus` on an empty cache: hash the files, scan them for the
  character counts, build the vocabulary and encode everything into the cache;
- cached: the second `load_corpus`: hash the files, find the cache entry and
  memory-map the ids (pages load lazily; nothing is decoded or encoded again).
Throughput is decimal MB (10^6 bytes) of UTF-8 corpus per second. The files were just
written, so they sit in the OS page cache: this is CPU speed, not disk speed.

Each load runs in a fresh child process, which reports its peak resident memory
(`ru_maxrss`) and its memory after imports (torch & co.), so the difference is what
loading the corpus costs. Two corpus sizes, the second 4x the first, show that cost
staying flat as the corpus grows.

Reference, in the same run: Hugging Face tokenizers' own `Tokenizer.encode` (the
vocabulary's tokenizer, `Vocab.tokenizer`) on a 2 MB sample of the same corpus, next to
charnet's lookup-table `Vocab.encode` on the same sample, interleaved; both produce the
same ids (checked). Target: cached loading >= 50 MB/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, machine, mb, write_json

TARGET_CACHED_MB_S = 50.0

# Passages in scripts the bundled corpus lacks, one after every block of Shakespeare:
# about 3% of the generated characters and 7% of its bytes are not ASCII, enough to
# exercise multi-byte decoding and a vocabulary of ~300 ids without drowning the text.
MULTILINGUAL = [
    "Était-ce là l'œuvre d'un maître ? Ça, c'est à voir — déjà vu, naïveté, cœur.",
    "Größe, Übermut und Äpfel: ein Straßenfest in München, ß und ẞ.",
    "Ἐν ἀρχῇ ἦν ὁ λόγος, καὶ ὁ λόγος ἦν πρὸς τὸν θεόν. Σοφία, ψυχή, ἀλήθεια.",
    "Быть или не быть — вот в чём вопрос. Съешь же ещё этих мягких французских булок.",
    "生存还是毁灭，这是一个值得考虑的问题。春眠不觉晓，处处闻啼鸟。",
    "吾輩は猫である。名前はまだ無い。ひらがな、カタカナ、漢字の混じった文。",
    "사느냐 죽느냐 그것이 문제로다. 한국어 문장과 한글 자모.",
    "أكون أو لا أكون، تلك هي المسألة. مرحبا بالعالم.",
    "להיות או לא להיות, זו השאלה. שלום עולם.",
    "होना या न होना, यही प्रश्न है। नमस्ते दुनिया।",
    "Emoji 🎭👑🗡️✨, a family 👩‍👩‍👧, flags 🇬🇧🇫🇷, skin tones 👍🏽, and math 𝔄𝔟𝔠 ∮ ∇ ∞.",
    "Combining marks: e\u0301 a\u0308 n\u0303 A\u030a, and a zero\u200bwidth space.",
]
BLOCK_CHARS = 1_024  # Shakespeare characters between two multilingual passages


def generate_corpus(path: Path, size_bytes: int) -> int:
    """Write about `size_bytes` of UTF-8 text to `path`: the bundled Shakespeare, cut
    into blocks with a multilingual passage after each, repeated to the size asked."""
    source = (ROOT / "corpora" / "shakespeare.txt").read_text(encoding="utf-8")
    blocks = [source[i:i + BLOCK_CHARS] for i in range(0, len(source), BLOCK_CHARS)]
    passages = itertools.cycle(MULTILINGUAL)
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        while written < size_bytes:
            for block in blocks:
                piece = block + "\n" + next(passages) + "\n"
                f.write(piece)
                written += len(piece.encode("utf-8"))
                if written >= size_bytes:
                    break
    return path.stat().st_size


# -- the measured load, in a child process ----------------------------------------------


def child(corpus: Path, cache: Path) -> dict:
    """Load the corpus once; seconds, and memory before and at peak (bytes)."""
    import resource

    from charnet.training.data import load_corpus

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    cached = any(cache.rglob("*.uint*"))
    base = peak()
    start = time.perf_counter()
    encoded = load_corpus([corpus], cache=cache)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cache_hit": cached, "base_rss_bytes": base, "peak_rss_bytes": peak(),
            "chars": encoded.stats.chars, "tokens": len(encoded), "vocab_size": encoded.vocab.size}


def measure_load(corpus: Path, cache: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.encode", "--child", str(corpus), str(cache)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"the encoding child failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    size = corpus.stat().st_size
    result["mb_per_s"] = mb(size) / result["seconds"]
    result["rss_growth_bytes"] = result["peak_rss_bytes"] - result["base_rss_bytes"]
    return result


def measure_size(folder: Path, size_bytes: int, rounds: int) -> tuple[dict, Path]:
    """Cold then cached loads of one generated corpus; the median of `rounds` each,
    alternating cold and cached so both see the same machine load."""
    corpus = folder / f"corpus-{size_bytes // 1_000_000}mb.txt"
    actual = generate_corpus(corpus, size_bytes)
    colds, cacheds = [], []
    for r in range(rounds):
        cache = folder / f"cache-{size_bytes}-{r}"
        colds.append(measure_load(corpus, cache))
        cacheds.append(measure_load(corpus, cache))
        if not cacheds[-1]["cache_hit"] or colds[-1]["cache_hit"]:
            raise RuntimeError("the cold load found a cache entry, or the cached one did not")
        # The characters the vocabulary was built from, for the reference to use.
        chars = list(json.loads(next(cache.rglob("stats.json")).read_text("utf-8"))["char_counts"])
        shutil.rmtree(cache)
    pick = lambda runs: sorted(runs, key=lambda m: m["seconds"])[len(runs) // 2]  # noqa: E731 (the median run)
    return {"corpus_bytes": actual, "chars": colds[0]["chars"], "vocab_size": colds[0]["vocab_size"],
            "cold": pick(colds), "cached": pick(cacheds),
            "rounds": {"cold_s": [m["seconds"] for m in colds], "cached_s": [m["seconds"] for m in cacheds]},
            "chars_seen": chars}, corpus


def reference(corpus: Path, chars: list[str], sample_bytes: int, rounds: int) -> dict:
    """HF tokenizers' `Tokenizer.encode` against charnet's `Vocab.encode` on one sample,
    with the vocabulary `load_corpus` built over `chars`, the corpus' characters."""
    from charnet.tokenizer import Vocab

    with open(corpus, encoding="utf-8") as f:
        text = f.read(sample_bytes)  # characters; trimmed to bytes below
    raw = text.encode("utf-8")[:sample_bytes]
    text = raw.decode("utf-8", "ignore")
    nbytes = len(text.encode("utf-8"))
    vocab = Vocab.from_chars(chars)
    if vocab.tokenizer.encode(text).ids != vocab.encode(text).tolist():
        raise RuntimeError("tokenizers and charnet disagree on the sample")
    hf, table = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        vocab.tokenizer.encode(text)
        hf.append(mb(nbytes) / (time.perf_counter() - start))
        start = time.perf_counter()
        vocab.encode(text)
        table.append(mb(nbytes) / (time.perf_counter() - start))
    return {"sample_bytes": nbytes, "sample_chars": len(text), "vocab_size": vocab.size,
            "non_ascii_fraction": sum(1 for c in text if ord(c) > 127) / len(text),
            "tokenizers_mb_per_s": statistics.median(hf), "charnet_table_mb_per_s": statistics.median(table),
            "rounds": {"tokenizers": hf, "charnet_table": table}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=100.0, help="size of the large corpus, MB [default: 100]")
    parser.add_argument("--small-ratio", type=float, default=0.25,
                        help="the small corpus' size as a fraction of the large one's [default: 0.25]")
    parser.add_argument("--sample-mb", type=float, default=2.0, help="reference sample, MB [default: 2]")
    parser.add_argument("--rounds", type=int, default=1, help="cold+cached rounds per size [default: 1]")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a 5 MB corpus, a 0.5 MB sample")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", nargs=2, metavar=("CORPUS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]))))
        return
    if args.quick:
        args.size_mb, args.sample_mb = 5.0, 0.5

    with tempfile.TemporaryDirectory(prefix="charnet-bench-encode-") as tmp:
        folder = Path(tmp)
        sizes = {}
        for size in (int(args.size_mb * args.small_ratio * 1e6), int(args.size_mb * 1e6)):
            result, corpus = measure_size(folder, size, args.rounds)
            sizes[str(result["corpus_bytes"])] = result
            chars_seen = result.pop("chars_seen")
            for mode in ("cold", "cached"):
                m = result[mode]
                print(f"{mb(result['corpus_bytes']):7.1f} MB {mode:6s} {m['seconds']:7.2f} s {m['mb_per_s']:8.1f} MB/s"
                      f"   peak RSS {mb(m['peak_rss_bytes']):6.0f} MB (+{mb(m['rss_growth_bytes']):.0f} MB over imports)")
            if size != int(args.size_mb * 1e6):
                corpus.unlink()
        ref = reference(corpus, chars_seen, int(args.sample_mb * 1e6), 1 if args.quick else 3)
        if ref["vocab_size"] != sizes[str(corpus.stat().st_size)]["vocab_size"]:
            raise RuntimeError("the reference vocabulary is not the one load_corpus built")

    large = sizes[max(sizes, key=int)]
    small = sizes[min(sizes, key=int)]
    cached = large["cached"]["mb_per_s"]
    print(f"reference on a {mb(ref['sample_bytes']):.1f} MB sample ({100 * ref['non_ascii_fraction']:.1f}% non-ASCII, "
          f"{ref['vocab_size']} ids): tokenizers {ref['tokenizers_mb_per_s']:.2f} MB/s, "
          f"charnet Vocab.encode {ref['charnet_table_mb_per_s']:.1f} MB/s")
    print(f"cached loading {cached:.1f} MB/s (target >= {TARGET_CACHED_MB_S:g}), "
          f"{cached / ref['tokenizers_mb_per_s']:.0f}x tokenizers; cold {large['cold']['mb_per_s']:.1f} MB/s, "
          f"{large['cold']['mb_per_s'] / ref['tokenizers_mb_per_s']:.1f}x tokenizers")
    growth = large["cold"]["rss_growth_bytes"] - small["cold"]["rss_growth_bytes"]
    print(f"memory: corpus {mb(small['corpus_bytes']):.0f} -> {mb(large['corpus_bytes']):.0f} MB, cold-load memory "
          f"over imports {mb(small['cold']['rss_growth_bytes']):.0f} -> {mb(large['cold']['rss_growth_bytes']):.0f} MB "
          f"({mb(growth):+.0f} MB)")
    results = {"machine": machine(), "sizes": sizes, "largest": large, "reference": ref,
               "cold_mb_per_s": large["cold"]["mb_per_s"], "cached_mb_per_s": cached,
               "cold_vs_tokenizers": large["cold"]["mb_per_s"] / ref["tokenizers_mb_per_s"],
               "cached_vs_tokenizers": cached / ref["tokenizers_mb_per_s"],
               "rss_growth_small_to_large_bytes": growth, "target_cached_mb_per_s": TARGET_CACHED_MB_S,
               "quick": args.quick}
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
