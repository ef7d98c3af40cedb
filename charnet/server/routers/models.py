"""`GET /v1/models`: the served models, in OpenAI's list shape with charnet metadata;
and each model's ONNX export, for the playground's "run in this browser"."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from charnet.errors import CharnetError
from charnet.server.deps import Model, ReadyState, lookup_model
from charnet.server.errors import APIError
from charnet.server.onnx_exports import FILES
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


@router.get("/models/{model}/onnx/{file}", responses={200: {"content": {"application/octet-stream": {}}}}
            | {k: ERRORS[k] for k in (401, 404, 503)})
async def onnx_file(model: str, state: ReadyState,
                    file: Annotated[str, Path(description="Which file of the export.",
                                              json_schema_extra={"enum": list(FILES)})]) -> FileResponse:
    """A file of the model's ONNX export (`charnet.json`, `model.onnx`, `tokenizer.json`;
    made on first request when the server has the onnx extra): what the playground's
    "run in this browser" loads into onnxruntime-web."""
    served = lookup_model(state, model)
    if file not in FILES:
        raise APIError(404, f"an ONNX export has no file {file!r} (it has {', '.join(FILES)})", param="file",
                       code="not_found")
    try:
        folder = await asyncio.to_thread(served.onnx.folder)
    except CharnetError as e:
        raise APIError(404, f"model {model!r} has no usable ONNX export: {e}", code="onnx_unavailable") from None
    if folder is None:
        raise APIError(404, f"model {model!r} has no ONNX export and this server cannot make one (install "
                       "charnet[onnx], or write one beside the checkpoint with charnet export CKPT CKPT/onnx "
                       "--format onnx)", code="onnx_unavailable")
    return FileResponse(folder / file, media_type=FILES[file], headers={"Cache-Control": "no-cache"})
