"""Each model's engine processes, for real: processes of their own, requests sent to the
one holding the fewest sequences, killed mid-stream with SIGKILL and started again, gone
with the API process however that exits, and stopped after a graceful shutdown lets
running streams finish."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest

from charnet.inference.engine import Engine
from charnet.server.core.process import NICENESS
from tests.serving import MODEL, OTHER, events, until, wait_until

PROMPT = "ROMEO:\nBut soft"

pytestmark = pytest.mark.anyio


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def sample(api, name: str, model: str = MODEL) -> float:
    return api.state.metrics.registry.get_sample_value(name, {"model": model}) or 0


async def test_each_model_has_engine_processes_of_its_own(make_app):
    async with make_app(engines=2) as api:
        engines = (await api.client.get("/health")).json()["engines"]
        pids = [pid for model in engines.values() for pid in model]
        assert set(engines) == {MODEL, OTHER} and len(engines[MODEL]) == 2 and len(set(pids)) == 4
        assert os.getpid() not in pids and all(alive(pid) for pid in pids)
        # below the API process's priority: it gives way when the API has work
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in pids} == {min(19, ours + NICENESS)}
        assert sample(api, "charnet_engine_up") == sample(api, "charnet_engine_up", OTHER) == 2
    for pid in pids:  # stopped with the app
        await until(lambda: not alive(pid))


async def test_an_engine_killed_mid_stream_fails_its_requests_is_restarted_and_spares_the_other_model(
        make_app, solo, models_dir):
    async with make_app(max_chars_cap=100_000, engines=1) as api:
        post = api.client.post
        await post("/v1/completions", json={"model": MODEL, "prompt": "warm", "max_tokens": 3})
        misses = sample(api, "charnet_prompt_cache_misses_total")
        [pid] = api.state.models[MODEL].core.pids
        other = asyncio.create_task(post("/v1/completions", json={"model": OTHER, "prompt": "ROMEO:", "max_tokens": 400,
                                                                   "seed": 5, "stream": True}))
        streamed = asyncio.create_task(post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True,
                                                                      "max_tokens": 100_000}))
        whole = asyncio.create_task(post("/v1/completions", json={"model": MODEL, "prompt": "y",
                                                                   "max_tokens": 100_000}))
        await until(lambda: sample(api, "charnet_requests_running") == 2)
        os.kill(pid, signal.SIGKILL)
        s, w = await streamed, await whole
        frames = events(s.text)
        assert frames[-1] == "[DONE]" and frames[-2]["error"]["type"] == "server_error"
        assert "stopped (killed by signal 9)" in frames[-2]["error"]["message"]
        assert w.status_code == 503 and "being restarted" in w.json()["error"]["message"]
        # Until the new engine is up: /ready says so, and requests are told to retry.
        down = await api.client.get("/ready")
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        refused = await post("/v1/completions", json={"model": MODEL, "prompt": "z"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_restarting"
        assert (await api.client.get("/health")).json()["engines"][MODEL] == []
        await until(lambda: api.state.models[MODEL].core.ready, timeout=120)
        assert (await api.client.get("/ready")).status_code == 200
        assert len(api.state.models[MODEL].core.pids) == 1 and pid not in api.state.models[MODEL].core.pids
        assert not alive(pid)
        after = await post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 40, "seed": 2})
        assert after.json()["choices"][0]["text"] == solo(PROMPT, max_chars=40, seed=2).text
        untouched = "".join(f["choices"][0]["text"] for f in events((await other).text)[:-1])
        assert sample(api, "charnet_engine_restarts_total") == 1 and sample(api, "charnet_engine_up") == 1
        assert sample(api, "charnet_engine_restarts_total", OTHER) == 0
        assert sample(api, "charnet_prompt_cache_misses_total") > misses  # counters go on across restarts
        assert sample(api, "charnet_requests_running") == 0
    assert untouched == Engine.open(models_dir / OTHER).generate("ROMEO:", max_chars=400, seed=5).text


async def test_a_models_engines_share_its_requests_and_one_killed_spares_the_others(make_app, solo):
    """Two engines: each request goes to the one holding fewer sequences; killing one
    fails its request alone, the other's stream ends with its solo text (whatever
    threads its engine was lent meanwhile), and the model serves on while the dead one
    is started again (/ready 503 until it is back)."""
    async with make_app(max_chars_cap=100_000, engines=2) as api:
        post, core = api.client.post, api.state.models[MODEL].core
        first, second = core.pids
        doomed = asyncio.create_task(post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True,
                                                                    "max_tokens": 100_000}))
        await until(lambda: sample(api, "charnet_requests_running") == 1)
        spared = asyncio.create_task(post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "stream": True,
                                                                    "max_tokens": 50_000, "seed": 3}))
        await until(lambda: sample(api, "charnet_requests_running") == 2)
        os.kill(first, signal.SIGKILL)  # the first request's: both engines were idle, the first takes a tie
        frames = events((await doomed).text)
        assert frames[-2]["error"]["type"] == "server_error" and "being restarted" in frames[-2]["error"]["message"]
        assert (await api.client.get("/ready")).status_code == 503
        assert (await api.client.get("/health")).json()["engines"][MODEL] == [second]
        served = await post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 40, "seed": 2})
        assert served.json()["choices"][0]["text"] == solo(PROMPT, max_chars=40, seed=2).text
        text = "".join(f["choices"][0]["text"] for f in events((await spared).text)[:-1])
        assert text == solo(PROMPT, max_chars=50_000, seed=3).text
        await until(lambda: core.ready, timeout=120)
        assert (await api.client.get("/ready")).status_code == 200
        assert len(core.pids) == 2 and second in core.pids and first not in core.pids
        assert sample(api, "charnet_engine_up") == 2 and sample(api, "charnet_engine_restarts_total") == 1


async def test_max_concurrency_bounds_the_rows_of_all_a_models_engines_together(make_app):
    async with make_app(max_chars_cap=100_000, engines=2, max_concurrency=4) as api:
        body = {"model": MODEL, "prompt": "x", "n": 2, "max_tokens": 100_000, "stream": True}
        streams = [asyncio.create_task(api.client.post("/v1/completions", json=body)) for _ in range(3)]
        await until(lambda: sample(api, "charnet_requests_running") + sample(api, "charnet_requests_waiting") == 3)
        await asyncio.sleep(0.3)  # several steps: no more rows than that, though six sequences want one
        assert sample(api, "charnet_batch_sequences") == 4
        for task in streams:
            task.cancel()


def stream_in_thread(url: str, body: dict, first: threading.Event, out: list) -> threading.Thread:
    """Stream a completion in a thread: `first` set at its first chunk, the frames in `out`."""
    def run() -> None:
        with httpx.Client(timeout=60) as http, http.stream("POST", f"{url}/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    out.append(line[6:])
                    first.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_engines_do_not_outlive_a_killed_api_process(start_server, checkpoint):
    server = start_server([checkpoint])
    pids = httpx.get(f"{server.url}/health").json()["engines"][MODEL]
    assert pids and all(alive(pid) for pid in pids)
    os.kill(server.proc.pid, signal.SIGKILL)  # no shutdown of any kind
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30)


def test_a_graceful_shutdown_lets_streams_finish_then_stops_the_engines(start_server, checkpoint, solo):
    """SIGTERM to the whole process group, as a terminal's Ctrl-C or a service manager
    sends it: the engine ignores it, the stream in flight finishes with its solo text,
    then the server stops its engine and exits."""
    server = start_server([checkpoint])
    pids = httpx.get(f"{server.url}/health").json()["engines"][MODEL]
    first, frames = threading.Event(), []
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 600, "seed": 8, "stream": True}
    thread = stream_in_thread(server.url, body, first, frames)
    assert first.wait(60)
    os.killpg(server.proc.pid, signal.SIGTERM)
    thread.join(60)
    assert frames[-1] == "[DONE]"
    text = "".join(json.loads(f)["choices"][0]["text"] for f in frames[:-1])
    assert text == solo(PROMPT, max_chars=600, seed=8).text
    # uvicorn re-raises the signal it shut down on, so the status says what stopped it.
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30)
