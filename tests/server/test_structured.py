"""Structured output and the decoding controls over HTTP, in-process: both endpoints
convert them into the same engine request, so they give what the Python API gives."""

from __future__ import annotations

import re

import pytest

from tests.serving import MODEL, assert_error, events

pytestmark = pytest.mark.anyio

WORD = "[A-Z][a-z]{2,6}( [a-z]{2,6})?"


async def post(api, path: str, **body) -> dict:
    r = await api.client.post(path, json={"model": MODEL, **body})
    assert r.status_code == 200, r.text
    return r.json()


async def test_completions_take_vllms_structured_outputs(make_app, solo):
    async with make_app() as api:
        out = await post(api, "/v1/completions", prompt="ROMEO:\n", n=8, max_tokens=30, seed=3,
                         structured_outputs={"regex": WORD})
        choice = await post(api, "/v1/completions", prompt="x", n=8, max_tokens=30, seed=3,
                            structured_outputs={"choice": ["Ay", "No"]})
    assert all(re.fullmatch(WORD, c["text"]) and c["finish_reason"] == "stop" for c in out["choices"])
    assert out["choices"][2]["text"] == solo("ROMEO:\n", max_chars=30, seed=5, constraint={"regex": WORD}).text
    assert {c["text"] for c in choice["choices"]} <= {"Ay", "No"}


async def test_generate_takes_them_too_and_streams_them(make_app, solo):
    body = dict(prompt="ROMEO:\n", length=30, seed=4, structured_outputs={"regex": WORD})
    async with make_app() as api:
        whole = await post(api, "/v1/generate", **body)
        r = await api.client.post("/v1/generate", json={"model": MODEL, **body, "stream": True})
    assert whole["text"] == solo("ROMEO:\n", max_chars=30, seed=4, constraint={"regex": WORD}).text
    assert whole["finish_reason"] == "stop"
    streamed = [e for e in events(r.text) if e != "[DONE]"]
    assert "".join(e["text"] for e in streamed) == whole["text"] and streamed[-1]["finish_reason"] == "stop"


async def test_a_constraint_the_vocabulary_cannot_finish_is_a_400(make_app):
    async with make_app() as api:
        r = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 20,
                                                           "structured_outputs": {"regex": "ab€"}})
    error = assert_error(r, 400, None, "no character of the model's vocabulary can continue it")
    assert error["type"] == "invalid_request_error"


async def test_response_format_text_is_unconstrained(make_app, solo):
    async with make_app() as api:
        out = await post(api, "/v1/completions", prompt="x", max_tokens=20, seed=1, response_format={"type": "text"})
    assert out["choices"][0]["text"] == solo("x", max_chars=20, seed=1).text


async def test_decoding_controls_reach_the_engine(make_app, solo):
    controls = dict(min_p=0.05, typical_p=0.9, frequency_penalty=0.5, presence_penalty=0.3)
    async with make_app() as api:
        models = (await api.client.get("/v1/models")).json()["data"]
        vocab = next(m for m in models if m["id"] == MODEL)["charnet"]["vocabulary"]
        e_id = vocab.index("e")
        out = await post(api, "/v1/completions", prompt="x", max_tokens=40, seed=2, **controls)
        gen = await post(api, "/v1/generate", prompt="x", length=40, seed=2, **controls)
        banned = await post(api, "/v1/completions", prompt="x", max_tokens=200, seed=2,
                            logit_bias={str(e_id): -100}, char_bias={" ": -100})
        forced = await post(api, "/v1/generate", prompt="x", length=20, seed=2, logit_bias={str(e_id): 100})
    expected = solo("x", max_chars=40, seed=2, **controls).text
    assert out["choices"][0]["text"] == gen["text"] == expected
    assert expected != solo("x", max_chars=40, seed=2).text  # the controls changed something
    text = banned["choices"][0]["text"]
    assert len(text) == 200 and "e" not in text and " " not in text
    assert forced["text"] == "e" * 20
