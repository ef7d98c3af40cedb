"""`POST /v1/score`: how well a model predicts a text, character by character.

The same numbers as `charnet eval` (the text scored as one document from the model's
initial state), plus every character's log-probability and the characters the model
expected instead: what the playground's score view colours.

The forward pass runs in a worker thread (`asyncio.to_thread`), never on the event
loop. It holds the engine's lock like every use of the model, so while it runs that
model's batch waits; --max-score-chars bounds how long that can be, and a model takes
at most --max-concurrency score requests at once (429 beyond).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from fastapi import APIRouter, Depends

from charnet.server.deps import Model, ReadyState, lookup_model, require_key
from charnet.server.errors import APIError
from charnet.server.jobs import finite
from charnet.server.routers import ERRORS
from charnet.server.schemas import ScoreRequest, ScoreResponse

router = APIRouter(prefix="/v1", tags=["score"], dependencies=[Depends(require_key)])


def _chars(model: Model, text: str, score) -> list[dict[str, Any]]:
    vocab = model.engine.vocab
    ids = vocab.encode(text)
    # A character vocabulary has one token per character: show the text's own
    # characters (an unknown one stays itself, not U+FFFD). A byte token may be part
    # of a character, so it is shown as the API shows bytes elsewhere.
    shown = list(text) if vocab.kind == "char" else [vocab.display(int(i)) for i in ids]
    logprobs = score.logprobs.tolist()
    top_ids = score.top_ids.tolist() if score.top_ids is not None else None
    top_values = score.top_logprobs.tolist() if score.top_logprobs is not None else None
    unknown = (ids == vocab.unk_id).tolist() if vocab.unk_id is not None else [False] * len(ids)
    chars = [{"text": shown[0], "logprob": None, "top": [], "unknown": unknown[0]}] if shown else []
    for k in range(score.tokens):
        top = ([(vocab.display(i), finite(v)) for i, v in zip(top_ids[k], top_values[k])]
               if top_ids is not None else [])
        chars.append({"text": shown[k + 1], "logprob": finite(logprobs[k]), "top": top, "unknown": unknown[k + 1]})
    return chars


@router.post("/score", response_model=ScoreResponse, responses={k: ERRORS[k] for k in (400, 401, 404, 413, 429, 503)})
async def score(body: ScoreRequest, state: ReadyState) -> Any:
    """Score a text: bits per character (as `charnet eval`), and each character's
    log-probability with the most likely alternatives at its position."""
    model = lookup_model(state, body.model)
    limit = state.settings.max_score_chars
    if len(body.text) > limit:
        raise APIError(400, f"text: {len(body.text)} characters is above this server's limit of {limit} "
                            "(--max-score-chars)", param="text", code="text_too_long")
    busy = state.scoring.get(model.name, 0)
    if busy >= state.settings.max_concurrency:
        raise APIError(429, f"model {model.name!r} is scoring {busy} texts already; retry shortly",
                       code="overloaded", headers={"Retry-After": "1"})
    state.scoring[model.name] = busy + 1
    try:
        result = await asyncio.to_thread(model.engine.score, body.text, top=body.top)
    finally:
        state.scoring[model.name] -= 1
    state.metrics.scored_chars.labels(model.name).inc(result.tokens)
    bits = result.bits_per_char
    return {"model": model.name, "bits_per_char": bits if math.isfinite(bits) else None, "tokens": result.tokens,
            "unknown": result.unknown, "chars": _chars(model, body.text, result)}
