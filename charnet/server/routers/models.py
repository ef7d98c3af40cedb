"""`GET /v1/models`: the served models, in OpenAI's list shape with charnet metadata."""

from __future__ import annotations

from fastapi import APIRouter

from charnet.server.deps import Model, ReadyState, lookup_model
from charnet.server.routers import ERRORS
from charnet.server.responses import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


def card(model: Model) -> ModelCard:
    return ModelCard(id=model.name, created=model.created, charnet=model.info)


@router.get("/models", response_model=ModelList, responses={k: ERRORS[k] for k in (401, 503)})
async def list_models(state: ReadyState) -> ModelList:
    """Every model this server serves."""
    return ModelList(data=[card(m) for m in state.models.values()])


@router.get("/models/{model}", response_model=ModelCard, responses={k: ERRORS[k] for k in (401, 404, 503)})
async def get_model(model: str, state: ReadyState) -> ModelCard:
    """One model by name."""
    return card(lookup_model(state, model))
