"""The app factory: ``uvicorn --factory charnet.server.app:create_app``.

`create_app(settings)` builds a FastAPI app whose lifespan loads every model, starts one
engine loop thread per model, and stops them on shutdown. Without settings it reads
them from the environment (`Settings.from_env`), which is how each ``--workers`` process
gets them. Everything an app holds (models, caches, metrics) is its own: two apps in
one process share nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from charnet import __version__
from charnet.checkpoint import load_checkpoint
from charnet.engine import Engine
from charnet.server import errors
from charnet.server.deps import Model, ServerState
from charnet.server.errors import APIError, BodyTooLarge
from charnet.server.metrics import Metrics, RequestCounter
from charnet.server.routers import completions, generate, health, models, score
from charnet.server.scheduler import Scheduler
from charnet.server.settings import Settings
from charnet.device import resolve_device

log = logging.getLogger("charnet.server")

DESCRIPTION = """Character-level recurrent language models over HTTP.

- `POST /v1/completions`: OpenAI's legacy completions API (streaming too); one token is one character.
- `POST /v1/generate`: charnet's own simple endpoint, streaming as SSE or NDJSON.
- `POST /v1/score`: bits per character of a text, and every character's log-probability.
- `GET /v1/models`, `GET /health`, `GET /ready`, `GET /metrics`.
- `GET /`: the playground, a web page to generate and score text with these endpoints.

When the server has `CHARNET_API_KEY` set, `/v1/*` needs `Authorization: Bearer <key>`.
"""


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413 before anything parses them: at once
    from Content-Length, or as soon as a chunked body grows past the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _send_error(send, APIError(400, "invalid Content-Length header"))
                return
            if int(length) > self.limit:
                await _send_error(send, APIError(413, f"request body exceeds the server's limit of {self.limit} "
                                                      "bytes", code="body_too_large"))
                return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


async def _send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


PAGE_HEADERS = {
    # The page loads nothing from anywhere but this server, and talks to nothing else.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


def playground_html() -> str:
    """The playground page, read from the installed package."""
    return (resources.files("charnet.server") / "static" / "index.html").read_text(encoding="utf-8")


def _model_info(engine: Engine) -> dict:
    config = engine.checkpoint.config
    metrics = engine.checkpoint.metrics
    cfg = engine.model.config
    return {"cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "embedding": cfg.embedding,
            "parameters": engine.model.num_parameters(), "vocab_size": cfg.vocab_size,
            "tokenizer": engine.vocab.kind, "val_bits_per_char": metrics.get("val_bpc"),
            "step": metrics.get("step"), "state_bytes": engine.kernel.state_bytes(),
            "corpus": config["corpus"].get("name") if isinstance(config.get("corpus"), dict) else None}


def _load(settings: Settings, metrics: Metrics) -> dict[str, Model]:
    loaded: dict[str, Model] = {}
    for name, path in settings.models.items():
        engine = Engine(load_checkpoint(Path(path), resolve_device(settings.device)), cache_bytes=int(settings.cache_mb * (1 << 20)))
        scheduler = Scheduler(name, engine, metrics, max_concurrency=settings.max_concurrency,
                              max_queue=settings.max_queue, timeout=settings.request_timeout)
        created = int((engine.path / "config.json").stat().st_mtime)
        loaded[name] = Model(name, engine, scheduler, created, _model_info(engine))
        log.info("loaded model %s from %s", name, engine.path)
    return loaded


def create_app(settings: Settings | None = None) -> FastAPI:
    """The charnet server app (settings from the environment when not given)."""
    settings = settings if settings is not None else Settings.from_env()
    metrics = Metrics()
    state = ServerState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.threads)
        # Loading reads and hashes the weights: off the event loop.
        state.models = await asyncio.to_thread(_load, settings, metrics)
        for model in state.models.values():
            model.scheduler.start()
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await asyncio.to_thread(lambda: [m.scheduler.close() for m in state.models.values()])

    app = FastAPI(title="charnet", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.charnet = state
    metrics.watch_caches(lambda: [(m.name, m.engine.cache) for m in state.models.values()])
    errors.install(app)
    for router in (completions.router, generate.router, score.router, models.router, health.router):
        app.include_router(router)

    # The playground: files shipped inside the package (package data), found through
    # the package, not the working directory, so any install serves them.
    app.mount("/static", StaticFiles(packages=[("charnet.server", "static")]), name="static")
    page = playground_html()

    @app.get("/", include_in_schema=False)
    async def root() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    # Added last = outermost: count everything, refuse big bodies before any parsing.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestCounter, metrics=metrics)
    return app
