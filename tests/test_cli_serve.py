"""`charnet serve` for real: a uvicorn subprocess on a loopback port, the official
openai client, concurrent streams, disconnects, workers, and clean CLI errors."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import assert_clean_error, cli, run_cli
from tests.serving import API_KEY, MODEL, auth, metric, running, wait_until

PROMPT = "ROMEO:\nBut soft"


# -- bad input ------------------------------------------------------------------------------

def test_missing_checkpoint(capsys, tmp_path):
    assert_clean_error(cli(capsys, "serve", tmp_path / "nope"), "nope", "no such checkpoint")


def test_port_out_of_range(capsys, checkpoint):
    assert_clean_error(cli(capsys, "serve", checkpoint, "--port", "70000"), "--port")
    assert_clean_error(cli(capsys, "serve", checkpoint, "--max-concurrency", "0"), "--max-concurrency")


def test_no_checkpoints_found(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("serve", env={"CHARNET_CHECKPOINTS": str(tmp_path / "empty")}, cwd=tmp_path)
    assert_clean_error(result, "no checkpoints found")


def test_directory_without_checkpoints(capsys, tmp_path):
    (tmp_path / "stuff").mkdir()
    assert_clean_error(cli(capsys, "serve", tmp_path), "holds no checkpoint")


def test_damaged_checkpoint(capsys, tmp_path, checkpoint):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint / "best", broken)
    (broken / "config.json").write_text("{", encoding="utf-8")
    assert_clean_error(cli(capsys, "serve", broken), "config.json", "corrupt")


def test_port_in_use(capsys, checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_clean_error(cli(capsys, "serve", checkpoint, "--port", port), "address already in use")


# -- the official client against a real server ------------------------------------------------

@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def greedy_sample(checkpoint) -> str:
    result = run_cli("sample", checkpoint, "--temperature", "0", "--length", "80", "--prompt", PROMPT, "--no-echo")
    assert result.returncode == 0, result.stderr
    return result.stdout.removesuffix("\n")


def test_openai_client_matches_charnet_sample(client, greedy_sample):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=80, temperature=0)
    assert out.choices[0].text == greedy_sample and len(greedy_sample) == 80
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 80
    assert out.object == "text_completion" and out.model == MODEL and out.id.startswith("cmpl-")


def test_openai_client_streaming(client, greedy_sample):
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=80, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == greedy_sample
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 80


def test_openai_client_options_and_errors(client, server):
    out = client.completions.create(model=MODEL, prompt=["a", "b"], n=2, max_tokens=5, seed=3, logprobs=2,
                                    extra_body={"top_k": 5, "repetition_penalty": 1.2})
    assert len(out.choices) == 4 and all(len(c.logprobs.tokens) == 5 for c in out.choices)
    assert [m.id for m in client.models.list().data] == ["tiny", "tiny-gru"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="x", temperature=-1)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2001)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server.url}/health").status_code == 200  # open without a key
    assert httpx.get(f"{server.url}/metrics").status_code == 200


# -- structured output through the official client ---------------------------------------------

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "rank": {"enum": ["duke", "earl", "knight"]},
                                           "age": {"type": "integer", "minimum": 18, "maximum": 80}},
          "required": ["name", "rank", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def bundled(start_server) -> openai.OpenAI:
    """The bundled model, whose vocabulary has what JSON needs."""
    server = start_server(["shakespeare"])
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_openai_client_structured_outputs_in_extra_body(bundled):
    out = bundled.completions.create(model="shakespeare", prompt="ROMEO:\n", max_tokens=40, n=4, seed=1,
                                     extra_body={"structured_outputs": {"regex": r"[A-Z][a-z]+ (of|de) [A-Z][a-z]+"}})
    assert all(re.fullmatch(r"[A-Z][a-z]+ (of|de) [A-Z][a-z]+", c.text) for c in out.choices)
    assert {c.finish_reason for c in out.choices} == {"stop"}
    json_out = bundled.completions.create(model="shakespeare", prompt="", max_tokens=200, n=4, seed=2,
                                          extra_body={"structured_outputs": {"json": PERSON}})
    for choice in json_out.choices:
        jsonschema.validate(json.loads(choice.text), PERSON)


def test_openai_client_response_format(bundled):
    schema = bundled.completions.create(
        model="shakespeare", prompt="", max_tokens=200, n=4, seed=3,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}})
    for choice in schema.choices:
        jsonschema.validate(json.loads(choice.text), PERSON)
    stream = bundled.completions.create(
        model="shakespeare", prompt="", max_tokens=200, seed=3, stream=True,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}})
    assert "".join(c.choices[0].text for c in stream if c.choices) == schema.choices[0].text
    # Any object: its strings are open-ended, and this model writes prose in them.
    anything = bundled.completions.create(model="shakespeare", prompt="", max_tokens=60, seed=4,
                                          extra_body={"response_format": {"type": "json_object"}})
    assert anything.choices[0].text.startswith('{"')
    with pytest.raises(openai.BadRequestError) as bad:
        bundled.completions.create(model="shakespeare", prompt="", extra_body={"structured_outputs": {"regex": "("}})
    assert bad.value.body["param"] == "structured_outputs.regex"


# -- concurrency and disconnects ---------------------------------------------------------------

async def _stream_text(http: httpx.AsyncClient, url: str, body: dict) -> str:
    parts = []
    async with http.stream("POST", url, json=body, headers=auth()) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                parts.append(json.loads(line[6:])["choices"][0]["text"])
    return "".join(parts)


def test_32_concurrent_streams_equal_their_solo_runs(server, solo):
    bodies = [{"model": MODEL, "prompt": PROMPT[: 1 + i % 10], "max_tokens": 60 + i, "temperature": 1.0, "seed": i,
               "stream": True} for i in range(32)]

    async def run() -> list[str]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.gather(*(_stream_text(http, f"{server.url}/v1/completions", b) for b in bodies))

    texts = asyncio.run(run())
    for body, text in zip(bodies, texts):
        assert text == solo(body["prompt"], max_chars=body["max_tokens"], temperature=1.0, seed=body["seed"]).text


def test_disconnect_mid_stream_frees_the_slot(server):
    before = metric(httpx.get(f"{server.url}/metrics").text, "charnet_client_disconnects_total", model=MODEL)
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2000, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{server.url}/v1/completions", json=body,
                                                       headers=auth()) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert running(server) == 1
    # Closing the connection mid-stream cancels the generation at once.
    wait_until(lambda: running(server) == 0)
    after = metric(httpx.get(f"{server.url}/metrics").text, "charnet_client_disconnects_total", model=MODEL)
    assert after == before + 1


def test_disconnect_while_waiting_for_a_whole_response(server):
    before = metric(httpx.get(f"{server.url}/metrics").text, "charnet_client_disconnects_total", model=MODEL)
    # 16 choices of 2,000 characters: seconds of work, so the client leaves while it runs.
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2000, "n": 16, "temperature": 1.0}

    async def run() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            task = asyncio.create_task(http.post(f"{server.url}/v1/completions", json=body, headers=auth()))
            while await asyncio.to_thread(running, server) != 1:
                await asyncio.sleep(0.02)
            task.cancel()  # httpx closes the connection

    asyncio.run(run())
    # The server saw the client leave (a generation that finished first would not count)
    # and freed its slot.
    wait_until(lambda: metric(httpx.get(f"{server.url}/metrics").text, "charnet_client_disconnects_total",
                              model=MODEL) == before + 1)
    wait_until(lambda: running(server) == 0)


# -- replicas -----------------------------------------------------------------------------------

def test_two_workers_answer_on_one_port(start_server, checkpoint):
    server = start_server([checkpoint, "--workers", "2"])

    async def pids() -> set[int]:
        async def one() -> int:
            async with httpx.AsyncClient(timeout=30) as http:  # a new connection each time
                return (await http.get(f"{server.url}/health")).json()["pid"]

        # A worker answers once its own startup (loading the model) is done, which on a
        # busy machine can be well after the first one: keep asking for a while.
        seen: set[int] = set()
        deadline = time.monotonic() + 120
        while len(seen) < 2 and time.monotonic() < deadline:
            seen |= set(await asyncio.gather(*(one() for _ in range(16))))
            await asyncio.sleep(0.2)
        return seen

    assert len(asyncio.run(pids())) == 2
    out = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3}).json()
    assert len(out["choices"][0]["text"]) == 3


def test_model_names_from_arguments_and_roots(models_dir, monkeypatch, tmp_path):
    from charnet.cli.serve import resolve_models

    both = resolve_models([str(models_dir)])
    assert set(both) == {"tiny", "tiny-gru"} and both["tiny"].endswith("tiny/best")
    assert set(resolve_models([str(models_dir / "tiny")])) == {"tiny"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHARNET_CHECKPOINTS", str(models_dir))
    assert resolve_models([]) == both  # no argument: everything under the roots, run directories too
    assert set(resolve_models(["tiny-gru"])) == {"tiny-gru"}  # a name under the roots


def test_a_broken_checkpoint_among_good_ones_is_named_and_left_out(start_server, models_dir, tmp_path):
    """`charnet serve DIR` serves every checkpoint that loads and names each one that does
    not in one warning line; /ready lists what is served."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    bad = root / "nan"
    shutil.copytree(models_dir / "tiny-gru", bad)
    config = json.loads((bad / "config.json").read_text())
    config["model"]["layers"] = 100_000
    (bad / "config.json").write_text(json.dumps(config))
    server = start_server([root])
    warnings = [line for line in server.output().splitlines() if "warning" in line]
    assert len(warnings) == 1 and "not serving nan" in warnings[0] and "layers" in warnings[0], warnings
    assert httpx.get(f"{server.url}/ready").json()["models"] == [MODEL, "tiny-gru"]


def test_connection_limits_are_uvicorns(start_server, checkpoint):
    """--max-connections: uvicorn answers 503 once that many are open (the one asking
    included); --keep-alive: an idle connection is closed after that many seconds (slow
    clients belong to the proxy in front)."""
    server = start_server([checkpoint, "--max-connections", "2", "--keep-alive", "1"])
    with socket.create_connection(("127.0.0.1", server.port)) as held:
        held.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):
            answer += held.recv(1000)
        assert answer.startswith(b"HTTP/1.1 200")
        busy = httpx.get(f"{server.url}/health", timeout=10)
        assert busy.status_code == 503
        held.settimeout(10)
        assert held.recv(1000) == b""  # closed by the server once idle for --keep-alive (not 10 s later)
    wait_until(lambda: httpx.get(f"{server.url}/health", timeout=10).status_code == 200)
