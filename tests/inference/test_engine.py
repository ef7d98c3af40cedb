"""The Python API, `charnet.load(...)`: every sampling control, as a user calls it."""

from __future__ import annotations

import json
import math

import pytest

import charnet
from charnet.errors import CheckpointError, ConfigError
from tests.conftest import cli

PROMPT = "ROMEO:\n"


@pytest.fixture(scope="module")
def model(tiny_model):
    return charnet.load(tiny_model)


def text(model, **kw) -> str:
    return model.generate(PROMPT, **{"max_chars": 120, **kw}).text


def test_greedy_is_deterministic_and_ignores_the_seed(model):
    greedy = text(model, temperature=0, seed=1)
    assert greedy == text(model, temperature=0, seed=2) == text(model, temperature=0)
    assert len(greedy) == 120


def test_the_same_seed_reproduces_and_another_differs(model):
    a = model.generate(PROMPT, max_chars=120, seed=7)
    assert a.seed == 7 and a.finish_reason == "length" and a.completion_tokens == 120
    assert a.text == text(model, seed=7)
    assert text(model, seed=8) != a.text
    unseeded = model.generate(PROMPT, max_chars=120)
    assert text(model, seed=unseeded.seed) == unseeded.text  # the reported seed replays it


def test_top_k_1_and_a_tiny_top_p_equal_greedy(model):
    greedy = text(model, temperature=0)
    assert text(model, temperature=1.5, top_k=1, seed=3) == greedy
    assert text(model, temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_temperature_changes_diversity(model):
    def distinct(t):
        return len({text(model, temperature=t, seed=s, max_chars=30) for s in range(8)})
    assert distinct(0.05) < distinct(1.5)


def test_repetition_penalty_reduces_repeats(model):
    def repeats(p):
        # Characters that already appeared among the 8 before them.
        t = "".join(text(model, temperature=0, repetition_penalty=p, max_chars=200, seed=s) for s in range(2))
        return sum(t[i] in t[max(0, i - 8):i] for i in range(1, len(t)))
    base = repeats(1.0)
    assert base > 50  # greedy text repeats itself: there is something to reduce
    assert repeats(5.0) < 0.75 * base


def test_stop_sequences_cut_exactly(model):
    full = text(model, seed=4, max_chars=400)
    stop = full[150:153]
    cut = model.generate(PROMPT, max_chars=400, seed=4, stop=[stop, "\x00never"])
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    assert stop not in cut.text


def test_stream_pieces_join_to_generate(model):
    pieces = list(model.stream(PROMPT, max_chars=150, seed=11, temperature=0.9, stop=["\n\n"]))
    assert len(pieces) > 1
    assert "".join(pieces) == model.generate(PROMPT, max_chars=150, seed=11, temperature=0.9, stop=["\n\n"]).text


def test_num_samples_equal_separate_runs_with_derived_seeds(model):
    samples = model.generate(PROMPT, max_chars=80, seed=20, num_samples=4, top_p=0.9)
    assert [s.seed for s in samples] == [20, 21, 22, 23]
    assert [s.text for s in samples] == [text(model, max_chars=80, seed=20 + i, top_p=0.9) for i in range(4)]
    assert len({s.text for s in samples}) == 4


def test_empty_prompt_starts_a_document(model):
    out = model.generate("", max_chars=50, seed=1)
    assert len(out.text) == 50 and out.prompt_tokens == 0


def test_unknown_prompt_characters_are_counted(model):
    out = model.generate("ROMEO Ω東京", max_chars=5, seed=1)
    assert out.unknown_prompt_chars == 3 and out.prompt_tokens == 9


def test_score_agrees_with_charnet_eval(model, tiny_model, tmp_path, capsys):
    sample = "ROMEO:\nWhat light through yonder window breaks?\n" * 5
    path = tmp_path / "sample.txt"
    path.write_text(sample, encoding="utf-8")
    result = cli(capsys, "eval", tiny_model, path, "--json")
    assert result.returncode == 0, result.stderr
    expected = json.loads(result.stdout)["total"]["bits_per_char"]
    score = model.score(sample)
    assert score.bits_per_char == pytest.approx(expected, rel=1e-6)
    assert score.tokens == len(sample) - 1 and len(score.logprobs) == score.tokens
    assert math.isclose(-score.logprobs.mean() / math.log(2), score.bits_per_char, rel_tol=1e-5)


def test_load_caches_and_finds_names(tiny_model, monkeypatch):
    assert charnet.load(tiny_model) is charnet.load(tiny_model)
    monkeypatch.setenv("CHARNET_CHECKPOINTS", str(tiny_model.parent))
    assert charnet.load("best").path == tiny_model
    with pytest.raises(CheckpointError, match="available names: .*best"):
        charnet.load("no-such-model")


@pytest.mark.parametrize("kw,field", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=-2), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(max_chars=-5), "max_chars"),
    (dict(num_samples=0), "num_samples"),
])
def test_bad_settings_name_their_field(model, kw, field):
    with pytest.raises(ConfigError) as e:
        model.generate(PROMPT, **kw)
    assert e.value.field == field
