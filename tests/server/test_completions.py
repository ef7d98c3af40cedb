"""POST /v1/completions in-process: OpenAI's shape, sampling, n, stop, logprobs, echo, streaming."""

from __future__ import annotations

import pytest

from tests.serving import MODEL, events

pytestmark = pytest.mark.anyio

PROMPT = "ROMEO:\nWhat light"


async def complete(api, **body):
    r = await api.client.post("/v1/completions", json={"model": MODEL, **body})
    assert r.status_code == 200, r.text
    return r.json()


async def test_response_shape_and_greedy_text(make_app, solo):
    async with make_app() as api:
        out = await complete(api, prompt=PROMPT, max_tokens=40, temperature=0)
    assert out["id"].startswith("cmpl-") and out["object"] == "text_completion" and out["model"] == MODEL
    assert isinstance(out["created"], int)
    [choice] = out["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert choice["text"] == solo(PROMPT, max_chars=40, temperature=0).text
    assert out["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 40, "total_tokens": len(PROMPT) + 40}


async def test_default_max_tokens_is_openais_16(make_app):
    async with make_app() as api:
        out = await complete(api, prompt="x")
    assert out["usage"]["completion_tokens"] == 16


async def test_seeded_sampling_n_and_prompt_lists(make_app, solo):
    async with make_app() as api:
        out = await complete(api, prompt=["To be", "or not"], n=3, max_tokens=25, temperature=1.0, seed=11, top_k=20)
    assert [c["index"] for c in out["choices"]] == list(range(6))
    for c in out["choices"]:
        prompt = ["To be", "or not"][c["index"] // 3]
        assert c["text"] == solo(prompt, max_chars=25, temperature=1.0, top_k=20, seed=11 + c["index"] % 3).text
    assert out["usage"]["prompt_tokens"] == len("To be") + len("or not")
    assert out["usage"]["completion_tokens"] == 6 * 25


async def test_stop_strings(make_app, solo):
    full = solo(PROMPT, max_chars=60, temperature=0).text
    stop = full[20:23]
    expected = full[: full.index(stop)]
    async with make_app() as api:
        out = await complete(api, prompt=PROMPT, max_tokens=60, temperature=0, stop=[stop, "\u2603"])
        single = await complete(api, prompt=PROMPT, max_tokens=60, temperature=0, stop=stop)
    assert out["choices"][0]["text"] == single["choices"][0]["text"] == expected
    assert out["choices"][0]["finish_reason"] == "stop"


async def test_logprobs_and_echo(make_app):
    async with make_app() as api:
        out = await complete(api, prompt=PROMPT, max_tokens=12, temperature=0.8, seed=3, logprobs=3, echo=True)
    [choice] = out["choices"]
    lp = choice["logprobs"]
    assert choice["text"].startswith(PROMPT)
    generated = choice["text"][len(PROMPT):]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["token_logprobs"][: len(PROMPT)] == [None] * len(PROMPT)
    assert lp["text_offset"] == list(range(len(choice["text"])))
    for token, value, top in zip(lp["tokens"][len(PROMPT):], lp["token_logprobs"][len(PROMPT):],
                                 lp["top_logprobs"][len(PROMPT):]):
        assert value <= 0 and top[token] == value and 3 <= len(top) <= 4
        assert max(top.values()) >= value
    assert len(generated) == 12


async def test_stream_matches_the_whole_response(make_app):
    body = dict(prompt=PROMPT, max_tokens=30, temperature=1.0, seed=5, logprobs=1)
    async with make_app() as api:
        whole = await complete(api, **body)
        r = await api.client.post("/v1/completions", json={"model": MODEL, **body, "stream": True,
                                                           "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = events(r.text)
    assert chunks[-1] == "[DONE]"
    usage_chunk, chunks = chunks[-2], chunks[:-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    assert all(c["id"] == chunks[0]["id"] and c["object"] == "text_completion" for c in chunks)
    assert all(c["usage"] is None for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][:-1] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    tokens = [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]]
    offsets = [t for c in chunks for t in c["choices"][0]["logprobs"]["text_offset"]]
    assert tokens == whole["choices"][0]["logprobs"]["tokens"] and offsets == list(range(30))


async def test_stream_interval_gathers_characters_into_fewer_chunks(make_app):
    """--stream-interval spaces a stream's chunks out: the same text arrives in a few
    chunks, each carrying what was generated meanwhile, instead of about one a step."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 400, "seed": 3, "stream": True}
    texts, counts = [], []
    for interval in (0.0, 0.5):
        async with make_app(stream_interval=interval) as api:
            r = await api.client.post("/v1/completions", json=body)
        chunks = [c for c in events(r.text)[:-1] if c["choices"][0]["text"]]
        texts.append("".join(c["choices"][0]["text"] for c in chunks))
        counts.append(len(chunks))
    assert texts[0] == texts[1] and len(texts[0]) == 400
    assert counts[1] < counts[0] and counts[1] <= 1 + 400 // 100, counts


async def test_stream_without_usage_and_with_echo(make_app):
    async with make_app() as api:
        r = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "abc", "max_tokens": 5,
                                                           "stream": True, "echo": True, "seed": 1})
    chunks = events(r.text)
    assert chunks[-1] == "[DONE]" and all("usage" not in c for c in chunks[:-1])
    assert chunks[0]["choices"][0]["text"] == "abc"
    assert len("".join(c["choices"][0]["text"] for c in chunks[:-1])) == 3 + 5


async def test_zero_max_tokens(make_app):
    async with make_app() as api:
        out = await complete(api, prompt="abc", max_tokens=0)
    assert out["choices"][0]["text"] == "" and out["choices"][0]["finish_reason"] == "length"
