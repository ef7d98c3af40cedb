"""The app factory: ``uvicorn --factory charnet.server.app:create_app``.

`create_app(settings)` builds a FastAPI app whose lifespan reads every model's checkpoint
(for its vocabulary, card and ONNX export), starts each model's engine processes
(`charnet.server.core`), and stops them on shutdown. Without settings it reads them from
the environment (`Settings.from_env`), which is how each ``--workers`` process gets them.
Everything an app holds (models, engine processes, metrics) is its own: two apps in one
process share nothing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import mimetypes
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from charnet import __version__
from charnet.checkpoint import Checkpoint, load_checkpoint
from charnet.errors import CharnetError
from charnet.server import errors, openapi
from charnet.server.core.client import EngineClient
from charnet.server.deps import Model, ServerState
from charnet.server.metrics import Metrics, RequestCounter
from charnet.server.middleware import ApiKey, BodyLimit
from charnet.server.onnx_exports import OnnxExport
from charnet.server.routers import completions, generate, health, models, score
from charnet.server.settings import Settings

log = logging.getLogger("charnet.server")

DESCRIPTION = """Character-level recurrent language models over HTTP.

- `POST /v1/completions`: OpenAI's legacy completions API (streaming too); one token is one character.
- `POST /v1/generate`: charnet's own simple endpoint, streaming as SSE or NDJSON.
- `POST /v1/score`: bits per character of a text, and every character's log-probability.
- `GET /v1/models`, `GET /health`, `GET /ready`, `GET /metrics`.
- `GET /v1/models/{model}/onnx/{file}`: the model's ONNX export, which the playground's "run in
  this browser" loads into onnxruntime-web.
- `GET /`: the playground, a web page to generate and score text with these endpoints.

When the server has `CHARNET_API_KEY` set, `/v1/*` needs `Authorization: Bearer <key>`.
"""


PAGE_HEADERS = {
    # The page loads nothing from anywhere but this server, and talks to nothing else.
    # 'wasm-unsafe-eval': "run in this browser" compiles onnxruntime-web's WebAssembly.
    "Content-Security-Policy": "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


def playground_html() -> str:
    """The playground page, read from the installed package."""
    return (resources.files("charnet.server") / "static" / "index.html").read_text(encoding="utf-8")


def _model_info(checkpoint: Checkpoint, onnx: OnnxExport) -> dict:
    config, metrics, cfg, vocab = checkpoint.config, checkpoint.metrics, checkpoint.model.config, checkpoint.vocab
    return {"cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "embedding": cfg.embedding,
            "parameters": checkpoint.model.num_parameters(), "vocab_size": cfg.vocab_size,
            "tokenizer": vocab.kind, "val_bits_per_char": metrics.get("val_bpc"),
            "step": metrics.get("step"), "state_bytes": cfg.state_bytes,
            "corpus": config["corpus"].get("name") if isinstance(config.get("corpus"), dict) else None,
            "vocabulary": vocab.listing(), "onnx": onnx.available}


def _checkpoints(settings: Settings) -> dict[str, Checkpoint]:
    """Every model's checkpoint that loads; one that does not is named in one warning
    line and left out (`charnet serve` checked them all before starting, so this is a
    checkpoint that broke since)."""
    loaded: dict[str, Checkpoint] = {}
    for name, path in settings.models.items():
        try:
            loaded[name] = load_checkpoint(Path(path))
        except CharnetError as e:
            log.warning("not serving %s: %s", name, e)
    return loaded


async def _load(settings: Settings, metrics: Metrics) -> dict[str, Model]:
    """Every model whose checkpoint loads and whose engine processes start (all started
    at once), as served models."""
    # Reading and hashing the weights: off the event loop.
    checkpoints = await asyncio.to_thread(_checkpoints, settings)
    clients = {name: EngineClient(name, str(checkpoint.path), settings, metrics)
               for name, checkpoint in checkpoints.items()}
    started = await asyncio.gather(*(client.start() for client in clients.values()), return_exceptions=True)
    loaded: dict[str, Model] = {}
    for (name, client), result in zip(clients.items(), started):
        if isinstance(result, BaseException):
            await client.close()
            if not isinstance(result, CharnetError):
                raise result
            log.warning("not serving %s: %s", name, result)
            continue
        checkpoint = checkpoints[name]
        onnx = OnnxExport(checkpoint)
        loaded[name] = Model(name=name, checkpoint=checkpoint, core=client, onnx=onnx,
                             created=int((checkpoint.path / "config.json").stat().st_mtime),
                             info=_model_info(checkpoint, onnx))
        log.info("serving model %s from %s", name, checkpoint.path)
    return loaded


def create_app(settings: Settings | None = None) -> FastAPI:
    """The charnet server app (settings from the environment when not given)."""
    settings = settings if settings is not None else Settings.from_env()
    metrics = Metrics()
    state = ServerState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.models = await _load(settings, metrics)
        if not state.models:
            raise CharnetError(f"none of the models could be loaded ({', '.join(settings.models)})")
        # Everything loaded so far (torch, the models) lives as long as the process: out of
        # the collector's sight, so a full collection scans what requests allocate, not the
        # startup's million objects (such a collection takes 100-400 ms here, every stream
        # paused meanwhile).
        gc.collect()
        gc.freeze()
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await asyncio.gather(*(m.core.close() for m in state.models.values()))

    app = FastAPI(title="charnet", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.charnet = state
    app.openapi = lambda: openapi.schema(app, state)
    errors.install(app)
    for router in (completions.router, generate.router, score.router, models.router, health.router):
        app.include_router(router)

    # The playground: files shipped inside the package (package data), found through
    # the package, not the working directory, so any install serves them.
    app.mount("/static", StaticFiles(packages=[("charnet.server", "static")]), name="static")
    # "Run in this browser": the web export's generator and the vendored onnxruntime-web.
    # Module scripts need a JavaScript type, WebAssembly its own; not every mime table has them.
    mimetypes.add_type("text/javascript", ".mjs")
    mimetypes.add_type("application/wasm", ".wasm")
    app.mount("/local", StaticFiles(packages=[("charnet.export", "web")]), name="local")
    page = playground_html()

    @app.get("/", include_in_schema=False)
    async def root() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    # Added last = outermost: count everything, then check the key, then refuse big
    # bodies, all before anything reads the body.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(ApiKey, key=settings.api_key)
    app.add_middleware(RequestCounter, metrics=metrics)
    return app
