"""bench.novelty: a quick run writes the figures the report reads, and they make sense."""

from __future__ import annotations

import pytest

from bench.common import tinyshakespeare
from tests.bench.quick import run_quick


@pytest.mark.skipif(tinyshakespeare() is None, reason="no ../shared/corpora/tinyshakespeare.txt")
def test_quick_novelty_bench(tmp_path):
    _, data = run_quick("novelty", tmp_path, timeout=600)
    text, lines = data["text"], data["lines"]
    assert data["corpus_bytes"] >= 5e6 and text["build_s"] > 0 and text["per_sample_s"] > 0
    assert min(text["copied_longest"]) >= 900 and max(text["scrambled_longest"]) < 20  # copied vs shuffled text
    assert lines["fractions"]["new"] == pytest.approx(0.5)  # half the items were made up
