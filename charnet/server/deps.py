"""Dependencies shared by the routers: settings, state, the API key check, model lookup."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from charnet.engine import Engine
from charnet.server.errors import APIError
from charnet.server.metrics import Metrics
from charnet.server.scheduler import Scheduler
from charnet.server.settings import Settings


@dataclass
class Model:
    """A served model: its name, engine, engine loop and metadata."""

    name: str
    engine: Engine
    scheduler: Scheduler
    created: int
    info: dict = field(default_factory=dict)


@dataclass
class ServerState:
    """What the lifespan loads, kept on ``app.state.charnet``."""

    settings: Settings
    metrics: Metrics
    models: dict[str, Model] = field(default_factory=dict)
    ready: bool = False
    scoring: dict[str, int] = field(default_factory=dict)
    """Score requests in flight per model (admission for /v1/score)."""


def get_state(request: Request) -> ServerState:
    return request.app.state.charnet


State = Annotated[ServerState, Depends(get_state)]


def get_settings(state: State) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]

# auto_error=False: a missing key is our 401 in OpenAI's shape, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="The server's CHARNET_API_KEY, when it has one.")


def require_key(settings: SettingsDep,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the request carries ``Authorization: Bearer <CHARNET_API_KEY>`` (when a
    key is set). Compared in constant time."""
    if not settings.api_key:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode("utf-8"), settings.api_key.encode("utf-8")):
        message = "missing API key: send Authorization: Bearer <key>" if not given else "invalid API key"
        raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def ready_state(state: State) -> ServerState:
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
