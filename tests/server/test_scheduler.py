"""The engine loop: admission (429), the queue, timeouts, cancellation, failure isolation
and the prompt-state cache, driven through the app in-process."""

from __future__ import annotations

import asyncio

import pytest

from charnet.inference.prompt_cache import PromptCache
from tests.conftest import BAD_TOP_P
from tests.serving import MODEL, events, metric, until
from tests.server.test_completions import PROMPT

pytestmark = pytest.mark.anyio

LONG = {"model": MODEL, "prompt": "x", "max_tokens": 100_000, "temperature": 1.0, "seed": 1}


def gauges(api) -> tuple[float, float]:
    """(requests running, requests waiting) as the engine loop last published them."""
    registry = api.state.metrics.registry
    return tuple(registry.get_sample_value(name, {"model": MODEL}) or 0
                 for name in ("charnet_requests_running", "charnet_requests_waiting"))


async def test_full_means_429_with_retry_after_and_a_cancelled_request_frees_its_slot(make_app):
    async with make_app(max_concurrency=1, max_queue=1, max_chars_cap=100_000) as api:
        post = api.client.post
        running = asyncio.create_task(post("/v1/completions", json=LONG))
        await until(lambda: gauges(api) == (1, 0))
        waiting = asyncio.create_task(post("/v1/completions", json={**LONG, "seed": 2}))
        await until(lambda: gauges(api) == (1, 1))
        r = await post("/v1/completions", json={**LONG, "max_tokens": 1})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        text = (await api.client.get("/metrics")).text
        assert metric(text, "charnet_requests_running", model=MODEL) == 1
        assert metric(text, "charnet_requests_waiting", model=MODEL) == 1
        assert metric(text, "charnet_requests_rejected_total", model=MODEL) == 1
        # The client of the waiting request gives up: it leaves the queue at once.
        waiting.cancel()
        await until(lambda: gauges(api) == (1, 0))
        # The running one gives up: its row leaves the batch.
        running.cancel()
        await until(lambda: gauges(api) == (0, 0))
        await until(lambda: len(api.state.models[MODEL].scheduler._batch) == 0)
        ok = await post("/v1/completions", json={**LONG, "max_tokens": 3})
        assert ok.status_code == 200


async def test_request_timeout(make_app):
    async with make_app(request_timeout=0.3, max_chars_cap=100_000) as api:
        r = await api.client.post("/v1/completions", json=LONG)
        assert r.status_code == 408 and r.json()["error"]["type"] == "timeout_error"
        assert "--request-timeout" in r.json()["error"]["message"]
        s = await api.client.post("/v1/completions", json={**LONG, "stream": True})
        frames = events(s.text)
        assert frames[-1] == "[DONE]" and frames[-2]["error"]["type"] == "timeout_error"
        assert gauges(api) == (0, 0)
        text = (await api.client.get("/metrics")).text
        assert metric(text, "charnet_request_timeouts_total", model=MODEL) == 2


async def test_a_failing_generation_fails_only_its_request(make_app, boom, solo):
    async with make_app() as api:
        post = api.client.post
        good = {"model": MODEL, "prompt": PROMPT, "max_tokens": 200, "seed": 4}
        results = await asyncio.gather(post("/v1/completions", json=good),
                                       post("/v1/completions", json={**good, "prompt": "boom"}),
                                       post("/v1/completions", json={**good, "prompt": "boom", "stream": True}),
                                       post("/v1/completions", json={**good, "stream": True}))
        ok, failed, failed_stream, ok_stream = results
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["text"] == solo(PROMPT, max_chars=200, seed=4).text
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        frames = events(failed_stream.text)
        assert frames[-1] == "[DONE]" and "error" in frames[-2]
        assert "".join(f["choices"][0]["text"] for f in events(ok_stream.text)[:-1]) == ok.json()["choices"][0]["text"]
        assert (await api.client.get("/ready")).status_code == 200
        assert (await post("/v1/completions", json={**good, "max_tokens": 5})).status_code == 200
        assert metric((await api.client.get("/metrics")).text, "charnet_generation_failures_total", model=MODEL) == 2


@pytest.mark.parametrize("where", ["lookup", "put"])
async def test_a_failing_prime_fails_only_its_request(make_app, monkeypatch, where):
    # Starting (the cache lookup) or priming (caching a mark) fails for the 13-character
    # prompt only: that request fails, the one beside it does not.
    real = getattr(PromptCache, where)

    def failing(self, ids, *args):
        if len(ids) == 13:
            raise MemoryError("injected")
        return real(self, ids, *args)

    monkeypatch.setattr(PromptCache, where, failing)
    async with make_app() as api:
        bad, good = await asyncio.gather(
            api.client.post("/v1/completions", json={"model": MODEL, "prompt": "13 characters"}),
            api.client.post("/v1/completions", json={"model": MODEL, "prompt": "fine"}))
        assert bad.status_code == 500 and good.status_code == 200
        await until(lambda: gauges(api) == (0, 0))


async def test_prompt_cache_hits_give_the_cold_output(make_app, solo):
    preamble = "A long shared preamble, longer than one cache block of sixty-four characters: " * 2
    body = {"model": MODEL, "max_tokens": 50, "temperature": 1.0, "seed": 9}
    async with make_app(cache_mb=0) as cold_api:
        cold = [(await cold_api.client.post("/v1/completions", json={**body, "prompt": p})).json()["choices"][0]["text"]
                for p in (preamble, preamble + "ROMEO:")]
        assert metric((await cold_api.client.get("/metrics")).text, "charnet_prompt_cache_hits_total",
                      model=MODEL) == 0
    async with make_app() as api:
        texts = []
        for p in (preamble, preamble, preamble + "ROMEO:"):  # miss, exact hit, prefix hit
            r = await api.client.post("/v1/completions", json={**body, "prompt": p})
            texts.append(r.json()["choices"][0]["text"])
        text = (await api.client.get("/metrics")).text
        assert metric(text, "charnet_prompt_cache_misses_total", model=MODEL) == 1
        assert metric(text, "charnet_prompt_cache_hits_total", model=MODEL) == 2
        assert metric(text, "charnet_prompt_cache_bytes", model=MODEL) > 0
    assert texts == [cold[0], cold[0], cold[1]]
    assert cold[1] == solo(preamble + "ROMEO:", max_chars=50, seed=9).text


async def test_requests_in_one_batch_equal_their_solo_runs(make_app, solo):
    async with make_app() as api:
        bodies = [{"model": MODEL, "prompt": PROMPT[: 3 + i], "max_tokens": 40 + 3 * i, "seed": i, "top_p": 0.9,
                   "repetition_penalty": 1.0 + 0.1 * (i % 3), "stream": bool(i % 2)} for i in range(12)]
        responses = await asyncio.gather(*(api.client.post("/v1/completions", json=b) for b in bodies))
    for body, r in zip(bodies, responses):
        if body["stream"]:
            text = "".join(f["choices"][0]["text"] for f in events(r.text)[:-1])
        else:
            text = r.json()["choices"][0]["text"]
        assert text == solo(body["prompt"], max_chars=body["max_tokens"], seed=body["seed"], top_p=0.9,
                            repetition_penalty=body["repetition_penalty"]).text


async def test_shutdown_ends_queued_and_running_requests(make_app):
    async with make_app(max_concurrency=1, max_queue=1, max_chars_cap=100_000) as api:
        running = asyncio.create_task(api.client.post("/v1/completions", json=LONG))
        await until(lambda: gauges(api) == (1, 0))  # admitted first: two tasks started together may arrive either way
        waiting = asyncio.create_task(api.client.post("/v1/completions", json={**LONG, "stream": True}))
        await until(lambda: gauges(api) == (1, 1))
        await asyncio.to_thread(api.state.models[MODEL].scheduler.close)
        r, s = await running, await waiting
        assert r.status_code == 503
        assert events(s.text)[0]["error"]["code"] is None


def batch_of(api):
    return api.state.models[MODEL].scheduler._batch


def priming(api) -> list:
    return [s for s in list(batch_of(api).seqs) if s.priming]


async def test_a_long_prompt_primes_between_other_requests_steps(make_app, solo):
    """A long prompt takes one row a step: a short request sent while it primes finishes
    first, with its solo text, and /ready stays 200."""
    async with make_app(max_prompt_chars=32_768) as api:
        long = asyncio.create_task(api.client.post("/v1/completions", json={
            "model": MODEL, "prompt": PROMPT * (30_000 // len(PROMPT)), "max_tokens": 5, "stream": True}))
        await until(lambda: priming(api))
        short = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 20,
                                                               "seed": 2})
        assert short.json()["choices"][0]["text"] == solo("x", max_chars=20, seed=2).text
        assert priming(api) and not long.done()
        assert (await api.client.get("/ready")).status_code == 200
        long.cancel()


async def test_a_request_stops_priming_once_its_client_is_gone_or_its_time_is_up(make_app):
    prompt = PROMPT * (30_000 // len(PROMPT))
    async with make_app(request_timeout=1.0) as api:
        cache = api.state.models[MODEL].engine.cache
        r = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 5})
        assert r.status_code == 408 and cache.primed_tokens < len(prompt)  # it stopped priming
        innocent = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5})
        assert innocent.status_code == 200
    async with make_app() as api:
        cache = api.state.models[MODEL].engine.cache
        gone = asyncio.create_task(api.client.post("/v1/completions", json={
            "model": MODEL, "prompt": prompt, "max_tokens": 5, "stream": True}))
        await until(lambda: priming(api))
        gone.cancel()
        await until(lambda: batch_of(api).rows == 0)
        stopped_at = cache.primed_tokens
        await asyncio.sleep(0.2)
        assert cache.primed_tokens == stopped_at < len(prompt)


async def test_one_request_cannot_take_every_slot(make_app, solo):
    """Five requests of four choices each want 20 rows of 8: each gets its fair share, and
    a request arriving later gets a row at the next step, not when a flood ends; the
    floods' suspended choices resume and write what they write alone."""
    flood = {"model": MODEL, "prompt": "x", "n": 4, "max_tokens": 50_000, "stream": True}
    async with make_app(max_concurrency=8, max_n=4, max_chars_cap=100_000) as api:
        floods = [asyncio.create_task(api.client.post("/v1/completions", json={**flood, "seed": 10 * i}))
                  for i in range(5)]
        await until(lambda: gauges(api)[0] >= 5)
        assert batch_of(api).rows <= 8
        late = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "y", "max_tokens": 30,
                                                              "seed": 1})
        assert late.status_code == 200 and late.json()["choices"][0]["text"] == solo("y", max_chars=30, seed=1).text
        assert not any(f.done() for f in floods)
        for f in floods:
            f.cancel()
    async with make_app(max_concurrency=4, max_n=4) as api:
        bodies = [{"model": MODEL, "prompt": p, "n": 4, "max_tokens": 60, "seed": 7} for p in ("a", "b", "c")]
        results = await asyncio.gather(*(api.client.post("/v1/completions", json=b) for b in bodies))
    for body, r in zip(bodies, results):
        texts = [c["text"] for c in r.json()["choices"]]
        assert texts == [solo(body["prompt"], max_chars=60, seed=7 + i).text for i in range(4)]


async def test_a_failing_draw_fails_only_its_row(make_app, failing_draw, solo):
    """A failure inside the batched sampling step fails that request with a 500; the
    streams it shared the step with carry on to their solo text."""
    async with make_app() as api:
        good = {"model": MODEL, "prompt": PROMPT, "max_tokens": 200, "seed": 4, "stream": True}
        ok, bad = await asyncio.gather(api.client.post("/v1/completions", json=good),
                                       api.client.post("/v1/completions", json={**good, "top_p": BAD_TOP_P,
                                                                                "stream": False}))
        assert bad.status_code == 500
        text = "".join(f["choices"][0]["text"] for f in events(ok.text)[:-1])
        assert text == solo(PROMPT, max_chars=200, seed=4).text
