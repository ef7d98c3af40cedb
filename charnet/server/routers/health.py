"""Liveness, readiness and Prometheus metrics: open even when an API key is set, so
load balancers and scrapers need no secret."""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from charnet.server.deps import ServerState, State
from charnet.server.errors import APIError
from charnet.server.routers import ERRORS
from charnet.server.responses import Health

router = APIRouter(tags=["operations"])


def _engines(state: ServerState) -> dict[str, list[int]]:
    return {name: model.core.pids for name, model in state.models.items()}


@router.get("/health", response_model=Health)
async def health(state: State) -> Health:
    """Liveness: 200 while the process serves HTTP at all, with the models it serves
    (none while loading)."""
    return Health(status="ok", models=list(state.models), pid=os.getpid(), engines=_engines(state))


@router.get("/ready", response_model=Health, responses={503: ERRORS[503]})
async def ready(state: State) -> Response:
    """Readiness: 200 once every model is loaded and its engine processes run; 503 before
    that, while shutting down, or while an engine process that stopped is started again.
    Route traffic on this."""
    alive = state.ready and all(m.core.ready for m in state.models.values())
    if not alive:
        return APIError(503, "not ready: models loading, an engine process restarting, or shutting down",
                        code="not_ready", headers={"Retry-After": "1"}).response()
    return JSONResponse(Health(status="ready", models=list(state.models), pid=os.getpid(),
                               engines=_engines(state)).model_dump())


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                                                                   "description": "Prometheus text format."}})
async def metrics(state: State) -> Response:
    """Prometheus metrics of this process (this replica, this worker), rendered in a
    worker thread."""
    return Response(await asyncio.to_thread(state.metrics.render), media_type=CONTENT_TYPE_LATEST)
