"""POST /v1/score: charnet eval's numbers over HTTP, character by character."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from tests.conftest import cli
from tests.serving import MODEL, assert_error, metric, until

pytestmark = pytest.mark.anyio

TEXT = "ROMEO:\nWhat light through yonder window breaks? It is the east, and Juliet is the sun.\n"


async def test_bits_per_char_equals_charnet_eval(make_app, checkpoint, tmp_path, capsys):
    text = TEXT + "Ünïcode €\n"  # a few characters the tiny Shakespeare model never saw
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    result = cli(capsys, "eval", checkpoint, path, "--json")
    assert result.returncode == 0, result.stderr
    expected = json.loads(result.stdout)["total"]
    async with make_app() as api:
        r = await api.client.post("/v1/score", json={"model": MODEL, "text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL
    assert body["bits_per_char"] == pytest.approx(expected["bits_per_char"], rel=1e-6)
    assert body["tokens"] == expected["tokens"] == len(text) - 1
    assert body["unknown"] == expected["unknown"] > 0
    chars = body["chars"]
    assert "".join(c["text"] for c in chars) == text  # unknown characters shown as themselves
    missing = set(api.state.models[MODEL].vocab.unknown_chars(text))
    assert {"Ü", "€"} <= missing
    assert [c["unknown"] for c in chars] == [c in missing for c in text]
    assert chars[0]["logprob"] is None and chars[0]["top"] == []
    logprobs = [c["logprob"] for c in chars[1:]]
    assert -sum(logprobs) / len(logprobs) / math.log(2) == pytest.approx(body["bits_per_char"], rel=1e-5)
    for c in chars[1:]:
        values = [v for _, v in c["top"]]
        assert len(values) == 5 and values == sorted(values, reverse=True)  # 5 alternatives by default
        assert c["logprob"] <= values[0] + 1e-6  # nothing beats the most likely
        if c["text"] == c["top"][0][0]:
            assert c["logprob"] == pytest.approx(values[0], abs=1e-6)


async def test_top_and_texts_too_short_to_score(make_app):
    async with make_app() as api:
        none = (await api.client.post("/v1/score", json={"model": MODEL, "text": "To be", "top": 0})).json()
        one = (await api.client.post("/v1/score", json={"model": MODEL, "text": "T"})).json()
        empty = (await api.client.post("/v1/score", json={"model": MODEL, "text": ""})).json()
        many = (await api.client.post("/v1/score", json={"model": MODEL, "text": "To be", "top": 20})).json()
    assert all(c["top"] == [] for c in none["chars"]) and none["tokens"] == 4
    assert one["bits_per_char"] is None and one["tokens"] == 0 and one["chars"][0]["text"] == "T"
    assert empty["bits_per_char"] is None and empty["chars"] == []
    assert all(len(c["top"]) == 20 for c in many["chars"][1:])


async def test_errors_are_openai_shaped(make_app):
    async with make_app(max_score_chars=50, api_key="k") as api:
        key = {"Authorization": "Bearer k"}
        cases = [
            ({"model": MODEL, "text": "x" * 51}, key, 400, "text"),
            ({"model": MODEL, "text": "hi", "top": 21}, key, 400, "top"),
            ({"model": MODEL, "text": 5}, key, 400, "text"),
            ({"model": MODEL}, key, 400, "text"),
            ({"model": "nope", "text": "hi"}, key, 404, "model"),
            ({"model": MODEL, "text": "hi"}, {}, 401, None),
        ]
        for body, headers, status, param in cases:
            r = await api.client.post("/v1/score", json=body, headers=headers)
            assert_error(r, status, param)
        r = await api.client.post("/v1/score", json={"model": MODEL, "text": "x" * 51}, headers=key)
        assert "50" in r.json()["error"]["message"] and r.json()["error"]["code"] == "text_too_long"


async def test_scoring_shares_the_engine_with_generation_and_is_bounded(make_app, solo):
    """A long text is scored between the batch's steps (at most its share of the engine's
    time: tests/server/core/test_loop.py): a generation sent meanwhile finishes first,
    with its solo text; a model scores at most --max-concurrency texts at once; a score
    is the one a lone request gets."""
    long_text = TEXT * 700  # 60,000 characters
    async with make_app(max_concurrency=1, max_score_chars=100_000) as api:
        alone = (await api.client.post("/v1/score", json={"model": MODEL, "text": TEXT})).json()
        first = asyncio.create_task(api.client.post("/v1/score", json={"model": MODEL, "text": long_text, "top": 0}))
        await until(lambda: metric_now(api, "charnet_requests_running") == 1)
        generated = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 30,
                                                                   "seed": 3})
        assert generated.status_code == 200 and not first.done()
        assert generated.json()["choices"][0]["text"] == solo("a", max_chars=30, seed=3).text
        busy = await api.client.post("/v1/score", json={"model": MODEL, "text": TEXT})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert (await first).status_code == 200
        after = (await api.client.post("/v1/score", json={"model": MODEL, "text": TEXT})).json()
        assert after == alone
        text = (await api.client.get("/metrics")).text
    assert metric(text, "charnet_scored_chars_total", model=MODEL) == 2 * (len(TEXT) - 1) + len(long_text) - 1
    assert metric(text, "charnet_http_requests_total", route="/v1/score", status="429") == 1


def metric_now(api, name: str) -> float:
    return api.state.metrics.registry.get_sample_value(name, {"model": MODEL}) or 0


async def test_documented_in_openapi(make_app):
    async with make_app() as api:
        spec = (await api.client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/score"]["post"]
    assert {"200", "400", "404", "408", "429"} <= set(operation["responses"])
    props = spec["components"]["schemas"]["ScoreRequest"]["properties"]
    assert props["text"]["description"] and props["top"]["description"]
