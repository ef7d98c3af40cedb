"""`POST /v1/score`: how well a model predicts a text, character by character.

The same numbers as `charnet eval` (the text scored as one document from the model's
initial state), plus every character's log-probability and the characters the model
expected instead: what the playground's score view colours.

The text is scored by the model's engine loop a window at a time, between the steps of
its batch and with a bounded share of its time (`charnet.server.core.loop`), so a long
text slows generation down by at most that share; the answer is serialised in a worker
thread. A model scores at most --max-concurrency texts at once (429 beyond).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request

from charnet.inference.scoring import Score
from charnet.server import respond
from charnet.server.deps import Model, ReadyState, lookup_model
from charnet.server.routers import ERRORS
from charnet.server.responses import ScoreResponse
from charnet.server.schemas import ScoreRequest

router = APIRouter(prefix="/v1", tags=["score"])


def _chars(model: Model, text: str, ids, score: Score) -> list[dict[str, Any]]:
    vocab = model.vocab
    # A character vocabulary has one token per character: show the text's own
    # characters (an unknown one stays itself, not U+FFFD). A byte token may be part
    # of a character, so it is shown as the API shows bytes elsewhere.
    shown = list(text) if vocab.kind == "char" else [vocab.display(int(i)) for i in ids]
    logprobs = score.logprobs.tolist()
    top_ids = score.top_ids.tolist() if score.top_ids is not None else None
    top_values = score.top_logprobs.tolist() if score.top_logprobs is not None else None
    unknown = (ids == vocab.unk_id).tolist() if vocab.unk_id is not None else [False] * len(ids)
    finite = respond.finite
    chars = [{"text": shown[0], "logprob": None, "top": [], "unknown": unknown[0]}] if shown else []
    for k in range(score.tokens):
        top = ([(vocab.display(i), finite(v)) for i, v in zip(top_ids[k], top_values[k])]
               if top_ids is not None else [])
        chars.append({"text": shown[k + 1], "logprob": finite(logprobs[k]), "top": top, "unknown": unknown[k + 1]})
    return chars


@router.post("/score", response_model=ScoreResponse, responses={k: ERRORS[k] for k in (400, 401, 404, 408, 413,
                                                                                          429, 503)})
async def score(body: ScoreRequest, http: Request, state: ReadyState) -> Any:
    """Score a text: bits per character (as `charnet eval`), and each character's
    log-probability with the most likely alternatives at its position."""
    model = lookup_model(state, body.model)
    body.check(respond.limits(state.settings, model.vocab.size), state.settings.max_response_tokens)
    vocab = model.vocab
    ids = vocab.encode(body.text)
    job = respond.submit_score(http, model, ids, body.top, vocab.count_unknown(ids))
    events = await respond.collect(http, model, job)
    result = next(e.score for e in events if e.score is not None)
    model.core.meters.scored_chars.inc(result.tokens)
    bits = result.bits_per_char
    return await respond.json_response(lambda: {
        "model": model.name, "bits_per_char": bits if math.isfinite(bits) else None, "tokens": result.tokens,
        "unknown": result.unknown, "chars": _chars(model, body.text, ids, result)}, body.response_entries)
