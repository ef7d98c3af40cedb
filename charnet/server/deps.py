"""Dependencies shared by the routers: settings, state, readiness, model lookup."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from charnet.checkpoint import Checkpoint
from charnet.server.core.client import EngineClient
from charnet.server.errors import APIError
from charnet.server.metrics import Metrics
from charnet.server.onnx_exports import OnnxExport
from charnet.server.settings import Settings
from charnet.tokenizer import Vocab


@dataclass(kw_only=True)
class Model:
    """A served model: its name, checkpoint (for its vocabulary and card), its engine
    process and metadata."""

    name: str
    checkpoint: Checkpoint
    core: EngineClient
    created: int
    onnx: OnnxExport
    info: dict = field(default_factory=dict)

    @property
    def vocab(self) -> Vocab:
        return self.checkpoint.vocab


@dataclass
class ServerState:
    """What the lifespan loads, kept on ``app.state.charnet``."""

    settings: Settings
    metrics: Metrics
    models: dict[str, Model] = field(default_factory=dict)
    ready: bool = False


# Dependencies are coroutines: FastAPI runs a plain function in its thread pool, a
# round trip per request that costs more than they do.

async def get_state(request: Request) -> ServerState:
    return request.app.state.charnet


State = Annotated[ServerState, Depends(get_state)]


async def ready_state(request: Request) -> ServerState:
    # Not a dependency of `State`: every level of dependencies costs FastAPI a solve per
    # request, and this one is on every generation request's path.
    state = await get_state(request)
    if not state.ready:
        raise APIError(503, "the server is loading its models or shutting down", code="not_ready",
                       headers={"Retry-After": "1"})
    return state


ReadyState = Annotated[ServerState, Depends(ready_state)]


def lookup_model(state: ServerState, name: str | None) -> Model:
    """The model called `name` (the only model when None), or 404/400."""
    if name is None:
        if len(state.models) == 1:
            return next(iter(state.models.values()))
        raise APIError(400, f"model: required when the server has several models ({', '.join(state.models)})",
                       param="model", code="model_required")
    model = state.models.get(name)
    if model is None:
        listing = ", ".join(state.models) or "none"
        raise APIError(404, f"model {name!r} does not exist (served: {listing})", param="model",
                       code="model_not_found")
    return model
