"""Every invalid request gets a 4xx in OpenAI's error shape, naming the field."""

from __future__ import annotations

import asyncio
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
    ({"n": 2.5}, "n"),
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
    ({"echo": None, "presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"min_p": 2}, "min_p"),
    ({"typical_p": 0}, "typical_p"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"logit_bias": {"a": 1}}, "logit_bias.a"),
    ({"logit_bias": {"5": 101}}, "logit_bias.5"),
    ({"char_bias": {"ab": 1}}, "char_bias.ab"),
    ({"char_bias": {"€": 1}}, "char_bias"),
    ({"structured_outputs": {"regex": "[a-"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"json": "{oops"}}, "structured_outputs.json"),
    ({"structured_outputs": {"grammar": "start: ("}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"structured_outputs": {"json_object": True}}, "structured_outputs.json"),  # no braces in its vocabulary
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "response_format"),
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
    async with make_app(max_concurrency=4, max_queue=0, max_n=4) as api:
        post = api.client.post
        assert_error(await post("/v1/completions", json={"prompt": "x"}), 400, "model", "required")
        assert_error(await post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
                     400, None, "JSON")
        assert_error(await post("/v1/completions", json=[1, 2]), 400, None)
        assert_error(await post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404, "model", "nope")
        assert_error(await post("/v1/completions", json={"model": MODEL, "max_tokens": 2001}), 400, "max_tokens",
                     "--max-chars-cap")
        assert_error(await post("/v1/generate", json={"model": MODEL, "length": 2001}), 400, "length")
        assert_error(await post("/v1/completions", json={"model": MODEL, "n": 5}), 400, "n", "--max-n")
        assert_error(await post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b", "c"], "n": 2}), 400, "n",
                     "--max-concurrency + --max-queue")
        assert_error(await post("/v1/completions", json={"model": MODEL, "prompt": ["a"] * 5}), 400, "prompt", "--max-n")
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


@pytest.mark.parametrize("path, body, param", [
    ("/v1/generate", {"length": 1, "top_k": 2 ** 64}, "top_k"),
    ("/v1/completions", {"max_tokens": 1, "top_k": 2 ** 63}, "top_k"),
    ("/v1/completions", {"max_tokens": 1, "top_k": 1000}, "top_k"),  # beyond the vocabulary
    ("/v1/completions", {"max_tokens": 2 ** 64}, "max_tokens"),
    ("/v1/completions", {"max_tokens": 1, "n": 2 ** 64}, "n"),
    ("/v1/completions", {"max_tokens": 1, "logprobs": 2 ** 64}, "logprobs"),
    ("/v1/completions", {"max_tokens": 1, "seed": 2 ** 70}, "seed"),
    ("/v1/generate", {"length": -2 ** 64}, "length"),
    ("/v1/score", {"text": "hi", "top": 2 ** 64}, "top"),
])
async def test_numbers_past_their_bounds_are_400(make_app, path, body, param):
    """Integers arrive unbounded from JSON: each is refused where it enters, before it
    can reach a tensor (2^64 used to end every stream in the batch with a 500)."""
    async with make_app() as api:
        running = asyncio.create_task(api.client.post("/v1/completions", json={
            "model": MODEL, "prompt": "x", "max_tokens": 300, "seed": 5}))
        assert_error(await api.client.post(path, json={"model": MODEL, **body}), 400, param)
        ok = await running
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["text"]) == 300


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": "\ud800", "echo": True}, "prompt"),
    ("/v1/completions", {"prompt": "a\ud800", "stream": True}, "prompt"),
    ("/v1/completions", {"prompt": ["fine", "\udfff"]}, "prompt"),
    ("/v1/completions", {"prompt": "x", "stop": ["\ud800"]}, "stop"),
    ("/v1/completions", {"prompt": "x", "user": "\ud800"}, "user"),
    ("/v1/generate", {"prompt": "\ud800", "stream": True}, "prompt"),
    ("/v1/score", {"text": "ab\ud800"}, "text"),
])
async def test_lone_surrogates_are_400_naming_the_field(make_app, path, body, param):
    """JSON can carry a lone surrogate, which no response can write back as UTF-8: a 400
    before any work (it used to be a 500, or a stream dropped with no frames)."""
    async with make_app() as api:
        # json.dumps escapes the surrogate as \ud800, as a client's JSON would
        r = await api.client.post(path, content=json.dumps({"model": MODEL, **body}),
                                  headers={"content-type": "application/json"})
    error = assert_error(r, 400, param)
    assert "Unicode" in error["message"] or "unicode" in error["message"]


async def test_costs_are_bounded_before_any_work(make_app):
    async with make_app(max_prompt_chars=1000, max_response_tokens=50_000, max_chars_cap=4096) as api:
        post = api.client.post
        error = assert_error(await post("/v1/completions", json={"model": MODEL, "prompt": "x" * 1001}), 400, "prompt",
                             "--max-prompt-chars")
        assert error["code"] == "prompt_too_long"
        assert_error(await post("/v1/generate", json={"model": MODEL, "prompt": "x" * 1001}), 400, "prompt")
        # a 100-byte request may not ask for a 100 MB answer
        for body in ({"logprobs": 20, "n": 8, "max_tokens": 4096}, {"logprobs": 5, "echo": True, "n": 16,
                                                                    "prompt": "x" * 1000, "max_tokens": 1000}):
            error = assert_error(await post("/v1/completions", json={"model": MODEL, **body}), 400, None,
                                 "--max-response-tokens")
            assert error["code"] == "response_budget_exceeded" and "logprobs" in error["message"]
        assert_error(await post("/v1/generate", json={"model": MODEL, "length": 4096, "logprobs": 20}), 400, None,
                     "length x (1 + logprobs)")
        assert_error(await post("/v1/score", json={"model": MODEL, "text": "x" * 10_000, "top": 20}), 400, None,
                     "text characters x (1 + top)")
        assert_error(await post("/v1/completions", json={"model": MODEL, "stop": ["x" * 257]}), 400, "stop")
        ok = await post("/v1/completions", json={"model": MODEL, "prompt": "x" * 1000, "max_tokens": 2, "n": 1.0})
        assert ok.status_code == 200  # 1.0 is an integer to JSON Schema, so to the server


async def test_the_key_is_checked_before_the_body_is_read(make_app):
    async with make_app(api_key="s3cret", max_body_bytes=1000) as api:
        for content in (b"{not json", b"x" * 5000, json.dumps({"model": MODEL, "prompt": "\ud800"}).encode()):
            r = await api.client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
            assert_error(r, 401)
