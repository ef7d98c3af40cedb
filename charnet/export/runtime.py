"""An exported model driven by onnxruntime, sampling exactly as the browser page does.

    model = OnnxModel.open("shakespeare-onnx")
    model.generate("ROMEO:", max_chars=200, temperature=0.8, seed=1)

This is the page's generator (``charnet/export/web/generate.js``) transcribed: the same
priming (an empty prompt primes the manifest's ``document_start``), the same controls
(temperature, top-k, top-p, stop strings, length), the same draw and the same counter-
based randomness as `charnet.inference.sampling` (SplitMix64 of seed and step, and an
inverse-CDF draw in vocabulary order over the characters top-k and top-p keep), with
the arithmetic in float64 as JavaScript does it. A byte vocabulary writes valid UTF-8
only, as the engine keeps it to (`charnet.inference.constraints.Utf8`). So a seed gives
the same text here, in the browser, and (but for float32 differences between kernels,
which can flip a draw that falls on a boundary) in `charnet sample`.
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charnet.errors import ConfigError
from charnet.export.manifest import ONNX_MODEL, Manifest
from charnet.export.onnx import require
from charnet.inference.constraints import UTF8_MASKS, Utf8
from charnet.inference.sampling import SamplingParams, uniform


def _draw_u(seed: int, step: int) -> float:
    return float(uniform(np.array([seed], dtype=np.uint64), np.array([step], dtype=np.uint64))[0])


def choose(logits: list[float], *, temperature: float, top_k: int, top_p: float, u: float) -> int:
    """The next token from one row of logits (unknown id already at -inf)."""
    n = len(logits)
    if temperature == 0:
        return max(range(n), key=lambda i: (logits[i], -i))  # the first of the largest
    scaled = [v / temperature for v in logits]
    top = max(scaled)
    probs = [math.exp(v - top) for v in scaled]
    total = 0.0
    for p in probs:  # left to right, as the page adds (Python 3.12's sum() compensates)
        total += p
    probs = [p / total for p in probs]
    if 0 < top_k < n or top_p < 1:
        order = sorted(range(n), key=lambda i: -probs[i])  # stable: ties keep id order
        keep = [False] * n
        before = 0.0
        for rank, i in enumerate(order):
            keep[i] = rank == 0 or ((top_k == 0 or rank < top_k) and before < top_p)
            before += probs[i]
        probs = [p if k else 0.0 for p, k in zip(probs, keep)]
    cdf, acc = [], 0.0
    for p in probs:
        acc += p
        cdf.append(acc)
    target = u * acc
    for i, c in enumerate(cdf):
        if c > target:
            return i
    return n - 1


@dataclass
class OnnxModel:
    """An ONNX export (`charnet.export.onnx`) loaded into onnxruntime."""

    manifest: Manifest
    session: object

    @classmethod
    def open(cls, directory: str | Path, threads: int = 0) -> OnnxModel:
        require("onnxruntime")
        import onnxruntime as ort

        manifest = Manifest.read(Path(directory))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(Path(directory) / ONNX_MODEL), options, providers=["CPUExecutionProvider"])
        return cls(manifest, session)

    def zero_state(self, batch: int) -> list[np.ndarray]:
        m = self.manifest
        return [np.zeros((m.layers, batch, m.hidden), dtype=np.float32) for _ in m.state]

    def step(self, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (B, V) after `tokens` (B,), and the new state."""
        feed = {"tokens": np.asarray(tokens, dtype=np.int64), **dict(zip(self.manifest.state, state))}
        logits, *new = self.session.run(None, feed)
        return logits, new

    def encode(self, text: str) -> list[int]:
        m = self.manifest
        if m.vocab_kind == "byte":
            return list(text.encode("utf-8"))
        ids = {t: i for i, t in enumerate(m.tokens)}
        return [ids.get(ch, m.unk_id) for ch in text]

    def generate(self, prompt: str = "", *, max_chars: int = 200, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, stop: tuple[str, ...] = ()) -> str:
        """The page's generation from `prompt` (see the module docstring)."""
        SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)  # the engine's checks
        if not isinstance(max_chars, int) or max_chars < 0:
            raise ConfigError("max_chars", f"must be an integer >= 0, got {max_chars!r}")
        m = self.manifest
        state = self.zero_state(1)
        logits = None
        for token in self.encode(prompt or m.document_start):
            logits, state = self.step(np.array([token]), state)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        utf8 = Utf8() if m.vocab_kind == "byte" else None
        text = ""
        for t in range(max_chars):
            row = logits[0].astype(np.float64)
            if m.unk_id is not None:
                row[m.unk_id] = -math.inf
            if utf8 is not None:
                row[~UTF8_MASKS[utf8.row(max_chars - t)].numpy()] = -math.inf
            token = choose(row.tolist(), temperature=temperature, top_k=top_k, top_p=top_p, u=_draw_u(seed, t))
            if utf8 is not None:
                utf8.feed(token)
            for ch in decoder.decode(bytes([token])) if m.vocab_kind == "byte" else m.tokens[token]:
                text += ch
                ended = [s for s in stop if s and text.endswith(s)]
                if ended:
                    return text[:len(text) - max(map(len, ended))]
            logits, state = self.step(np.array([token]), state)
        return text + decoder.decode(b"", final=True) if m.vocab_kind == "byte" else text
