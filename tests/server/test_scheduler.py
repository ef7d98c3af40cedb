"""The engine loop: admission (429), the queue, timeouts, cancellation, failure isolation
and the prompt-state cache, driven through the app in-process."""

from __future__ import annotations

import asyncio

import pytest

from charnet.prompt_cache import PromptCache
from tests.serving import MODEL, events, metric
from tests.server.test_completions import PROMPT

pytestmark = pytest.mark.anyio

LONG = {"model": MODEL, "prompt": "x", "max_tokens": 100_000, "temperature": 1.0, "seed": 1}


async def until(predicate, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def gauges(api) -> tuple[int, int]:
    s = api.state.models[MODEL].scheduler
    with s._cond:
        return s._running_slots, s._waiting_slots


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


async def test_a_failing_prime_fails_only_its_request(make_app, monkeypatch):
    # Priming fails for any set of prompts holding the 13-character one, so whether the two
    # requests are admitted in one round (primed together, then retried one by one) or
    # in two, only that request may fail.
    real = PromptCache.prime_many

    def prime_many(self, kernel, prompts):
        if any(len(ids) == 13 for ids in prompts):
            raise MemoryError("injected")
        return real(self, kernel, prompts)

    monkeypatch.setattr(PromptCache, "prime_many", prime_many)
    async with make_app() as api:
        bad, good = await asyncio.gather(
            api.client.post("/v1/completions", json={"model": MODEL, "prompt": "13 characters"}),
            api.client.post("/v1/completions", json={"model": MODEL, "prompt": "fine"}))
        assert bad.status_code == 500 and good.status_code == 200
        assert gauges(api) == (0, 0)


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
