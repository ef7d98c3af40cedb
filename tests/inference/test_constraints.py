"""Structured output: constrained samples always match, follow the model's probabilities
among what the constraint allows, and leave their neighbours in a batch untouched; byte
models write valid UTF-8."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
import torch

import charnet
from charnet.config import ModelConfig
from charnet.errors import ConfigError
from charnet.inference.batch import Batch
from charnet.inference.constraints import UTF8_MASKS, Constraint, Utf8
from charnet.inference.kernel import StepKernel
from charnet.inference.request import GenerationRequest
from charnet.model import CharRNN
from charnet.tokenizer import Vocab

NAME = r"[A-Z][a-z]{2,8} (of|de|van) [A-Z][a-z]{3,10}"

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "role": {"enum": ["king", "queen", "fool"]},
        "age": {"type": "integer", "minimum": 16, "maximum": 90},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "home": {"type": "object",
                 "properties": {"city": {"type": "string", "maxLength": 10}, "walled": {"type": "boolean"}},
                 "required": ["city", "walled"], "additionalProperties": False},
    },
    "required": ["name", "role", "age", "score", "home"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model():
    return charnet.load("shakespeare")  # its vocabulary has what JSON needs


def test_200_samples_match_the_regex(model):
    outs = model.generate("ROMEO:\n", num_samples=200, max_chars=40, seed=1, constraint={"regex": NAME})
    assert all(re.fullmatch(NAME, o.text) for o in outs), [o.text for o in outs if not re.fullmatch(NAME, o.text)]
    assert all(o.finish_reason == "stop" for o in outs)
    assert len({o.text for o in outs}) > 150  # samples, not one string


def test_100_samples_are_json_that_validates(model):
    outs = model.generate("", num_samples=100, max_chars=400, seed=5, constraint={"json": SCHEMA})
    for o in outs:
        jsonschema.validate(json.loads(o.text), SCHEMA)
        assert o.finish_reason == "stop"
    assert len({json.loads(o.text)["age"] for o in outs}) > 5


def test_choice_returns_listed_strings_as_often_as_the_model_prefers_them(model):
    choices = ["Ay", "No", "What"]
    prompt = "ROMEO:\nShall we go?\n\nJULIET:\n"
    outs = model.generate(prompt, num_samples=600, max_chars=10, seed=11, constraint={"choice": choices})
    counts = {c: sum(o.text == c for o in outs) / len(outs) for c in choices}
    assert sum(counts.values()) == 1.0
    # Their first characters differ, so each choice's chance is its first character's,
    # renormalised over the three (what the rest forces has probability 1).
    with torch.no_grad():
        logits = model.model(torch.from_numpy(model.vocab.encode(prompt).astype(np.int64)).unsqueeze(0))[0]
    probs = torch.softmax(logits[0, -1].float(), -1)
    first = torch.tensor([float(probs[model.vocab.token_id(c[0])]) for c in choices])
    for c, expected in zip(choices, (first / first.sum()).tolist()):
        assert abs(counts[c] - expected) < 0.06, (counts, expected)


def test_a_constraint_that_may_go_on_lets_the_model_end_it(model):
    outs = model.generate("The ", num_samples=50, max_chars=30, seed=2, constraint={"regex": "[a-z]+"})
    assert all(re.fullmatch("[a-z]+", o.text) and o.finish_reason == "stop" for o in outs)
    assert len({len(o.text) for o in outs}) > 3  # words end where the model ends them


def test_max_chars_still_bounds_a_constrained_sequence(model):
    out = model.generate("x", max_chars=5, seed=1, constraint={"regex": "[a-z]{20}"})
    assert out.finish_reason == "length" and re.fullmatch("[a-z]{5}", out.text)


def test_grammar_in_lark_and_gbnf(model):
    lark = 'start: greeting " " NAME\ngreeting: "Good morrow" | "Farewell"\nNAME: /[A-Z][a-z]+/'
    gbnf = 'root ::= ("Good morrow" | "Farewell") " " [A-Z] [a-z]+'
    for grammar in (lark, gbnf):
        for o in model.generate("", num_samples=20, max_chars=40, seed=3, constraint={"grammar": grammar}):
            assert re.fullmatch("(Good morrow|Farewell) [A-Z][a-z]+", o.text), o.text


def test_constrained_rows_in_a_busy_batch_give_their_solo_output(model):
    requests = [GenerationRequest.of("ROMEO:\n", max_chars=60, seed=s, temperature=0.9,
                                     **({"constraint": {"regex": NAME}} if s % 3 == 0 else
                                        {"constraint": {"json": SCHEMA}} if s % 3 == 1 else {}))
                for s in range(12)]

    def texts(batch_of: list[GenerationRequest]) -> list[str]:
        batch = Batch(model.kernel, model.vocab)
        seqs = [batch.add(r)[0] for r in batch_of]
        while len(batch):
            batch.step()
        return [s.text for s in seqs]

    together = texts(requests)
    assert together == [texts([r])[0] for r in requests]
    assert re.fullmatch(NAME, together[0]) and together[2] != ""


@pytest.mark.parametrize("constraint,field,fragment", [
    ({"regex": "[a-"}, "regex", "unclosed character class"),
    ({"json": "{not json"}, "json", "not valid JSON"),
    ({"json": [1, 2]}, "json", "JSON Schema"),
    ({"grammar": "start: ("}, "grammar", ""),
    ({"choice": []}, "choice", "non-empty"),
    ({"choice": ["a", ""]}, "choice", "non-empty"),
    ({"regex": "a", "choice": ["b"]}, "constraint", "exactly one"),
    ({}, "constraint", "exactly one"),
    ({"regex": "a" * 70_000}, "regex", "limit"),
])
def test_an_invalid_constraint_names_its_field(constraint, field, fragment):
    with pytest.raises(ConfigError) as e:
        GenerationRequest.of("x", constraint=constraint)
    assert e.value.field == field and fragment in e.value.message


def test_a_constraint_the_vocabulary_cannot_begin_is_refused(tiny_model):
    engine = charnet.load(tiny_model)  # trained on plain text: no braces
    assert engine.vocab.token_id("{") is None
    with pytest.raises(ConfigError, match="can begin it"):
        engine.generate("x", constraint={"json_object": True})


def test_a_constraint_the_vocabulary_cannot_finish_fails_its_sequence_alone(model):
    batch = Batch(model.kernel, model.vocab)
    stuck = batch.add(GenerationRequest.of("x", max_chars=20, seed=1, constraint={"regex": "ab€"}))[0]
    fine = batch.add(GenerationRequest.of("x", max_chars=20, seed=1))[0]
    while len(batch):
        batch.step()
    assert isinstance(stuck.error, ConfigError) and "continue it after 'ab'" in str(stuck.error)
    assert stuck.text == "ab" and fine.text == model.generate("x", max_chars=20, seed=1).text


def test_constraint_of_accepts_vllms_and_openais_forms():
    assert Constraint.of({"json_object": True}) == Constraint(kind="json", spec='{"type": "object"}')
    assert Constraint.of({"json": {"type": "integer"}}).spec == '{"type": "integer"}'
    assert Constraint.of({"choice": ["a"], "regex": None}).kind == "choice"


# -- byte vocabularies: UTF-8 ---------------------------------------------------------------

@pytest.fixture(scope="module")
def byte_model():
    torch.manual_seed(0)  # untrained: its raw samples are mostly invalid UTF-8
    return StepKernel(CharRNN(ModelConfig(vocab_size=256, hidden=32, embedding=8)).eval()), Vocab.bytes()


@pytest.mark.parametrize("max_chars", [1, 2, 3, 7, 200])
def test_byte_samples_are_valid_utf8_and_length_never_splits_a_character(byte_model, max_chars):
    kernel, vocab = byte_model
    batch = Batch(kernel, vocab)
    seqs = batch.add(GenerationRequest.of("héllo 字", max_chars=max_chars, seed=4, temperature=1.5), count=16)
    while len(batch):
        batch.step()
    multibyte = 0
    for seq in seqs:
        text = bytes(seq.tokens).decode("utf-8")  # strict: raises on anything malformed or cut
        assert seq.text == text and "\ufffd" not in text and seq.generated == max_chars
        multibyte += len(text) < len(seq.tokens)
    if max_chars == 200:
        assert multibyte > 0  # the mask lets it write multi-byte characters, just whole ones


def test_byte_models_follow_constraints_over_unicode(byte_model):
    kernel, vocab = byte_model
    batch = Batch(kernel, vocab)
    seqs = batch.add(GenerationRequest.of("", max_chars=40, seed=1, constraint={"regex": "[αβγ]{3}-[字文]"}), count=8)
    while len(batch):
        batch.step()
    assert all(re.fullmatch("[αβγ]{3}-[字文]", s.text) and s.finish_reason == "stop" for s in seqs)


def test_utf8_masks_exclude_overlong_surrogate_and_out_of_range_forms():
    def allowed(seq: bytes, room: int = 4) -> set[int]:
        state = Utf8()
        for b in seq:
            state.feed(b)
        return set(torch.nonzero(UTF8_MASKS[state.row(room)]).flatten().tolist())

    assert 0xC0 not in allowed(b"") and 0xC1 not in allowed(b"") and 0xF5 not in allowed(b"")
    assert allowed(b"\xe0") == set(range(0xA0, 0xC0))  # no overlong three-byte forms
    assert allowed(b"\xed") == set(range(0x80, 0xA0))  # no surrogates
    assert allowed(b"\xf4") == set(range(0x80, 0x90))  # nothing past U+10FFFF
    assert allowed(b"", room=1) == set(range(0x80)) and max(allowed(b"", room=2)) == 0xDF


def test_no_matcher_is_used_while_a_prefetch_computes_it(monkeypatch):
    """llguidance refuses a matcher two threads use at once ("Already borrowed", a 500 the
    fuzzer found): a row joining the batch while the background job still computes the
    others' masks, a sibling forked, a token consumed, must each wait for that job."""
    import threading
    import time

    from charnet.inference import constraints

    real, spans, lock = constraints._compute, [], threading.Lock()

    def slow(matchers, vocab_size):
        start = time.monotonic()
        time.sleep(0.2)  # long enough that the calls below come while it runs
        result = real(matchers, vocab_size)
        with lock:
            spans.append((start, time.monotonic(), {id(m) for m in matchers}))
        return result

    monkeypatch.setattr(constraints, "_compute", slow)
    vocab = Vocab.from_chars("abcdefgh ")
    choice = Constraint.of({"choice": ["abc", "bad"]})
    first, joined = constraints.Matcher(choice, vocab), constraints.Matcher(choice, vocab)
    consume = lambda: first.consume(vocab.token_id("a"))  # noqa: E731
    for act in (lambda: constraints.masks([first, joined], vocab.size), first.copy, consume):
        constraints.prefetch([first], vocab.size)
        before = len(spans)
        act()
        with lock:
            assert len(spans) > before  # the job had ended before the matcher was used
    # The two mask computations over `first` never overlapped.
    over_first = sorted((a, b) for a, b, ids in spans if id(first) in ids)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(over_first, over_first[1:]))
