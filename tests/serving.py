"""Server fixtures (registered in tests/conftest.py): tiny checkpoints built here, in-process
apps, and a real `charnet serve`.

Nothing needs the network or a GPU: the checkpoints are trained (a few dozen steps) or
saved untrained in a session fixture, and every server listens on a free loopback port
and is shut down by its fixture's finalizer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from charnet.checkpoint import save_checkpoint
from charnet.cli import main
from charnet.config import ModelConfig
from charnet.model import CharRNN
from charnet.server.app import create_app
from charnet.server.settings import Settings
from charnet.tokenizer import Vocab
from tests.conftest import BUNDLED, ROOT, TINY, free_port

API_KEY = "test-key-1234"
MODEL = "tiny"
"""The trained model's name (its run directory's name)."""
OTHER = "tiny-gru"
"""A second, untrained model in the same directory."""


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A directory of two checkpoints: `tiny` (an LSTM trained for 30 steps, as a run
    directory) and `tiny-gru` (an untrained GRU checkpoint)."""
    root = tmp_path_factory.mktemp("models")
    corpus = root.parent / "corpus.txt"
    with open(BUNDLED, encoding="utf-8") as f:
        corpus.write_text(f.read(40_000), encoding="utf-8")
    with pytest.raises(SystemExit) as done:
        main(["train", str(corpus), *TINY, "--max-steps", "30", "--eval-every", "15", "--out", str(root / MODEL)])
    assert done.value.code == 0
    torch.manual_seed(1)
    vocab = Vocab.from_chars(corpus.read_text(encoding="utf-8"))
    gru = CharRNN(ModelConfig(vocab_size=vocab.size, cell="gru", hidden=24, embedding=8, layers=1))
    save_checkpoint(root / OTHER, gru, vocab, {"metrics": {}})
    return root


@pytest.fixture(scope="session")
def checkpoint(models_dir) -> Path:
    return models_dir / MODEL


def settings_for(models_dir: Path, **overrides) -> Settings:
    """The settings of an in-process app: one engine process per model unless asked (a
    start is two processes' worth of CPU); real servers (`start_server`) keep the
    default."""
    from charnet.cli.serve import resolve_models

    return Settings(models=resolve_models([str(models_dir)]), **{"max_chars_cap": 2000, "engines": 1, **overrides})


class AppClient:
    """An app with its lifespan running, and an httpx client calling it in-process."""

    def __init__(self, app, client: httpx.AsyncClient) -> None:
        self.app, self.client = app, client

    @property
    def state(self):
        return self.app.state.charnet


@pytest.fixture
def make_app(models_dir):
    """``async with make_app(**settings) as api:`` an in-process app and client."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def factory(**overrides):
        app = create_app(settings_for(models_dir, **overrides))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
                yield AppClient(app, client)

    return factory


class Server:
    """A real `charnet serve` subprocess on a loopback port."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w+") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "charnet", "serve", *args, "--port", str(self.port), "--log-level", "warning"],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=ROOT,
            stdout=self.log, stderr=self.log, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"charnet serve exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"charnet serve not ready in {timeout} s: {self.output()}")

    def output(self) -> str:
        if self.log is subprocess.DEVNULL:
            return ""
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.log is not subprocess.DEVNULL:
            self.log.close()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Start real servers (stopped at the end of the session): ``start_server(args, env)``."""
    servers: list[Server] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Server:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = Server([str(a) for a in args], env, log)
        servers.append(server)
        return server.wait_ready()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server, models_dir) -> Server:
    """One real server for the session: both models, an API key, room for 64 at once."""
    return start_server([models_dir, "--max-concurrency", "64", "--max-queue", "64", "--max-chars-cap", "2000"],
                        env={"CHARNET_API_KEY": API_KEY})


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def metric(text: str, name: str, **labels) -> float:
    """A sample's value from Prometheus text (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def events(body: str) -> list:
    """The JSON payloads of an SSE body, and the final [DONE] marker as the string."""
    frames = [f.removeprefix("data: ") for f in body.split("\n\n") if f.strip()]
    return [f if f == "[DONE]" else json.loads(f) for f in frames]


def assert_error(r, status: int, param: str | None = None, fragment: str = "") -> dict:
    """`r` is an error response in OpenAI's shape: `status`, naming `param`, whose
    message holds `fragment`."""
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param, error
    assert fragment in error["message"], error
    return error


def running(server) -> float:
    """charnet_requests_running of MODEL on a live server (`Server` or anything with `.url`)."""
    return metric(httpx.get(f"{server.url}/metrics").text, "charnet_requests_running", model=MODEL)


async def until(predicate, timeout: float = 30.0) -> None:
    """`wait_until` for a test on the event loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def wait_until(condition, timeout: float = 30) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def solo(checkpoint):
    """The trained model loaded on its own: what a request generates alone."""
    from charnet.inference.engine import Engine

    engine = Engine.open(checkpoint)

    def generate(prompt: str, **settings):
        return engine.generate(prompt, **settings)

    return generate
