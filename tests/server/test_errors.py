"""Every invalid request gets a 4xx in OpenAI's error shape, naming the field."""

from __future__ import annotations

import json

import pytest

from tests.serving import MODEL, assert_error

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("body, param", [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_p": float("nan")}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"n": 0}, "n"),
    ({"n": True}, "n"),
    ({"n": 2.0}, "n"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"seed": -1}, "seed"),
    ({"seed": 2 ** 63}, "seed"),
    ({"logprobs": 21}, "logprobs"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"stop": [""]}, "stop"),
    ({"stop": 3}, "stop"),
    ({"stop": ["a"] * 17}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"echo": None, "presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"suffix": "end"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"model": 7}, "model"),
])
async def test_bad_values_are_400_naming_the_field(make_app, body, param):
    async with make_app() as api:
        # json.dumps writes Infinity/NaN as Python's json (and FastAPI's parser) reads them.
        r = await api.client.post("/v1/completions", content=json.dumps({"model": MODEL, "prompt": "x", **body}),
                                  headers={"content-type": "application/json"})
    error = assert_error(r, 400, param)
    assert error["type"] == "invalid_request_error"


async def test_structural_errors(make_app):
    async with make_app(max_concurrency=4) as api:
        post = api.client.post
        assert_error(await post("/v1/completions", json={"prompt": "x"}), 400, "model", "required")
        assert_error(await post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
                     400, None, "JSON")
        assert_error(await post("/v1/completions", json=[1, 2]), 400, None)
        assert_error(await post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404, "model", "nope")
        assert_error(await post("/v1/completions", json={"model": MODEL, "max_tokens": 2001}), 400, "max_tokens",
                     "--max-chars-cap")
        assert_error(await post("/v1/generate", json={"model": MODEL, "length": 2001}), 400, "length")
        assert_error(await post("/v1/completions", json={"model": MODEL, "n": 5}), 400, "n", "--max-concurrency")
        assert_error(await post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b", "c"], "n": 2}), 400, "n")
        assert_error(await post("/v1/generate", json={"prompt": "x"}), 400, "model", "several")
        assert_error(await api.client.get("/v1/completions"), 405)
        assert_error(await api.client.get("/v1/nothing"), 404)
        assert_error(await api.client.get("/v1/models/nope"), 404, "model")


async def test_body_size_limit_before_parsing(make_app):
    async with make_app(max_body_bytes=1000) as api:
        big = {"model": MODEL, "prompt": "x" * 2000}
        assert_error(await api.client.post("/v1/completions", json=big), 413, None, "1000 bytes")

        async def chunks():  # no Content-Length: the limit applies as the body arrives
            yield b'{"model": "tiny", "prompt": "'
            for _ in range(10):
                yield b"x" * 200
            yield b'"}'

        assert_error(await api.client.post("/v1/completions", content=chunks(),
                                           headers={"content-type": "application/json"}), 413)
        ok = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 100, "max_tokens": 1})
        assert ok.status_code == 200


async def test_api_key(make_app):
    async with make_app(api_key="s3cret") as api:
        get, post = api.client.get, api.client.post
        error = assert_error(await get("/v1/models"), 401, None, "Authorization")
        assert error["type"] == "authentication_error"
        assert (await get("/v1/models")).headers["www-authenticate"] == "Bearer"
        assert_error(await get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(await get("/v1/models", headers={"Authorization": "Basic s3cret"}), 401)
        assert_error(await post("/v1/completions", json={"model": MODEL}), 401)
        assert_error(await post("/v1/generate", json={}, headers={"Authorization": "Bearer s3cretX"}), 401)
        ok = {"Authorization": "Bearer s3cret"}
        assert (await get("/v1/models", headers=ok)).status_code == 200
        assert (await post("/v1/completions", json={"model": MODEL, "max_tokens": 1}, headers=ok)).status_code == 200
        for open_path in ("/health", "/ready", "/metrics", "/openapi.json"):
            assert (await get(open_path)).status_code == 200, open_path
