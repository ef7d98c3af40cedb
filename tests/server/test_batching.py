"""Continuous batching through the app and a real engine process: admission (429), the
queue, timeouts, cancellation, shutdown, priming beside generation, fair shares and the
prompt-state cache, each seen from outside (responses and /metrics). Failure isolation
inside the engine loop: tests/server/core/test_loop.py."""

from __future__ import annotations

import asyncio

import pytest

from tests.serving import MODEL, events, metric, until
from tests.server.test_completions import PROMPT

pytestmark = pytest.mark.anyio

LONG = {"model": MODEL, "prompt": "x", "max_tokens": 100_000, "temperature": 1.0, "seed": 1}


def sample(api, name: str) -> float:
    """A metric of MODEL as the engine process last reported it."""
    return api.state.metrics.registry.get_sample_value(name, {"model": MODEL}) or 0


def gauges(api) -> tuple[float, float]:
    """(requests running, requests waiting)."""
    return sample(api, "charnet_requests_running"), sample(api, "charnet_requests_waiting")


def rows(api) -> float:
    """Sequences in the model's batch."""
    return sample(api, "charnet_batch_sequences")


def primed(api) -> float:
    """Prompt characters the engine has run through the model."""
    return sample(api, "charnet_prompt_primed_chars_total")


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
        await until(lambda: gauges(api) == (0, 0) and rows(api) == 0)
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
        await api.state.models[MODEL].core.close()
        r, s = await running, await waiting
        assert r.status_code == 503
        assert events(s.text)[0]["error"]["code"] is None


async def test_a_long_prompt_primes_between_other_requests_steps(make_app, solo):
    """A long prompt takes one row a step: a short request sent while it primes finishes
    first, with its solo text, and /ready stays 200."""
    async with make_app(max_prompt_chars=32_768) as api:
        prompt = PROMPT * (30_000 // len(PROMPT))
        long = asyncio.create_task(api.client.post("/v1/completions", json={
            "model": MODEL, "prompt": prompt, "max_tokens": 5, "stream": True}))
        await until(lambda: primed(api) > 0)
        short = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 20,
                                                               "seed": 2})
        assert short.json()["choices"][0]["text"] == solo("x", max_chars=20, seed=2).text
        assert primed(api) < len(prompt) and not long.done()
        assert (await api.client.get("/ready")).status_code == 200
        long.cancel()


async def test_a_request_stops_priming_once_its_client_is_gone_or_its_time_is_up(make_app):
    prompt = PROMPT * (30_000 // len(PROMPT))
    async with make_app(request_timeout=1.0) as api:
        r = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 5})
        assert r.status_code == 408 and 0 < primed(api) < len(prompt)  # it stopped priming
        innocent = await api.client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5})
        assert innocent.status_code == 200
    async with make_app() as api:
        gone = asyncio.create_task(api.client.post("/v1/completions", json={
            "model": MODEL, "prompt": prompt, "max_tokens": 5, "stream": True}))
        await until(lambda: primed(api) > 0)
        gone.cancel()
        await until(lambda: rows(api) == 0)
        stopped_at = primed(api)
        await asyncio.sleep(0.2)
        assert primed(api) == stopped_at < len(prompt)


async def test_one_request_cannot_take_every_slot(make_app, solo):
    """Five requests of four choices each want 20 rows of 8: each gets its fair share, and
    a request arriving later gets a row at the next step, not when a flood ends; the
    floods' suspended choices resume and write what they write alone."""
    flood = {"model": MODEL, "prompt": "x", "n": 4, "max_tokens": 50_000, "stream": True}
    async with make_app(max_concurrency=8, max_n=4, max_chars_cap=100_000) as api:
        floods = [asyncio.create_task(api.client.post("/v1/completions", json={**flood, "seed": 10 * i}))
                  for i in range(5)]
        await until(lambda: gauges(api)[0] >= 5)
        assert rows(api) <= 8
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
