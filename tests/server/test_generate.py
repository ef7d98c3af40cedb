"""POST /v1/generate: the native endpoint, whole, as SSE and as NDJSON."""

from __future__ import annotations

import json

import pytest

from tests.serving import MODEL, OTHER, events

pytestmark = pytest.mark.anyio


async def test_whole_sse_and_ndjson_agree(make_app, solo):
    body = {"model": MODEL, "prompt": "JULIET:", "length": 40, "seed": 21, "top_k": 10, "logprobs": 2}
    async with make_app() as api:
        whole = (await api.client.post("/v1/generate", json=body)).json()
        sse = await api.client.post("/v1/generate", json={**body, "stream": True})
        nd = await api.client.post("/v1/generate", json={**body, "stream": True},
                                   headers={"Accept": "application/x-ndjson"})
    expected = solo("JULIET:", max_chars=40, seed=21, top_k=10)
    assert whole["text"] == expected.text and whole["finish_reason"] == "length"
    assert (whole["seed"], whole["prompt_chars"], whole["generated_chars"]) == (21, 7, 40)
    assert [lp["text"] for lp in whole["logprobs"]] == list(expected.text)
    assert all(len(lp["top"]) == 2 for lp in whole["logprobs"])

    assert sse.headers["content-type"].startswith("text/event-stream")
    frames = events(sse.text)
    assert frames[-1] == "[DONE]"
    assert "".join(f["text"] for f in frames[:-1]) == expected.text
    assert [f["finish_reason"] for f in frames[:-1]] == [None] * (len(frames) - 2) + ["length"]

    assert nd.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in nd.text.splitlines()]
    assert "".join(x["text"] for x in lines) == expected.text and lines[-1]["finish_reason"] == "length"
    assert lines[-1]["generated_chars"] == 40


async def test_defaults_random_seed_reported_and_stop(make_app, solo):
    async with make_app() as api:
        out = (await api.client.post("/v1/generate", json={"model": OTHER, "length": 30})).json()
        again = (await api.client.post("/v1/generate", json={"model": OTHER, "length": 30, "seed": out["seed"]})).json()
        assert again["text"] == out["text"] and "logprobs" not in out
        full = solo("", max_chars=60, temperature=0).text
        stopped = (await api.client.post("/v1/generate", json={"model": MODEL, "length": 60, "temperature": 0,
                                                               "stop": full[30:32]})).json()
    assert stopped["text"] == full[: full.index(full[30:32])] and stopped["finish_reason"] == "stop"


async def test_model_may_be_omitted_with_one_model(make_app, models_dir):
    async with make_app() as api:
        api.state.models.pop(OTHER)
        out = await api.client.post("/v1/generate", json={"length": 3})
    assert out.status_code == 200 and out.json()["model"] == MODEL
