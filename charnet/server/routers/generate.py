"""`POST /v1/generate`: charnet's own endpoint, simple enough for curl.

Not streamed: one JSON object. Streamed: Server-Sent Events (``data: {...}`` frames,
then ``data: [DONE]``) by default, or newline-delimited JSON (one object a line, no
terminator) when the request says ``Accept: application/x-ndjson``. Every event has the
`GenerateResponse` shape: `text` holds the new piece, `finish_reason` is null until the
last event. An error mid-stream is one ``{"error": {...}}`` event.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from charnet.server import respond
from charnet.server.deps import ReadyState, lookup_model
from charnet.server.errors import APIError
from charnet.server.routers import ERRORS, SSE_EVENT
from charnet.server.job import Out
from charnet.server.responses import GenerateResponse
from charnet.server.schemas import GenerateRequest

router = APIRouter(prefix="/v1", tags=["generate"])

NDJSON = "application/x-ndjson"


def _logprobs(events: list[Out]) -> list[dict[str, Any]]:
    return [{"text": lp.text, "logprob": respond.finite(lp.logprob), "top": [(t, respond.finite(v)) for t, v in lp.top]}
            for e in events for lp in e.logprobs]


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True, responses={
    200: {"description": "The generation; with `stream`, events of the same shape as SSE (default) or NDJSON.",
          "content": {"text/event-stream": {"schema": SSE_EVENT},
                      NDJSON: {"schema": {"type": "string"}}}}, **ERRORS})
async def generate(body: GenerateRequest, http: Request, state: ReadyState) -> Any:
    """Continue a prompt with charnet's sampling settings."""
    model = lookup_model(state, body.model)
    settings = state.settings
    request = body.engine_request(respond.limits(settings, model.vocab.size), settings.max_response_tokens,
                                  model.vocab)
    job = respond.submit(http, model, [(request, 1)], body.stream)
    generated = [0]

    def event(events: list[Out], text: str) -> dict[str, Any]:
        choice = job.choices[0]
        generated[0] = max([generated[0], *(e.generated for e in events)])
        out = {"model": model.name, "text": text,
               "finish_reason": next((e.finish_reason for e in events if e.finish_reason), None),
               "seed": choice.seed, "prompt_chars": choice.prompt_tokens, "generated_chars": generated[0]}
        if body.logprobs is not None:
            out["logprobs"] = _logprobs(events)
        return out

    if not body.stream:
        events = await respond.collect(http, model, job)
        return await respond.json_response(lambda: event(events, "".join(e.text for e in events)),
                                           body.response_entries)

    ndjson = NDJSON in http.headers.get("accept", "")

    def frame(data: dict) -> str:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n" if ndjson else respond.sse(data)

    def render(events: list[Out]) -> list[str]:
        if not any(e.text or e.finish_reason or e.logprobs for e in events):
            return []
        return [frame(event(events, "".join(e.text for e in events)))]

    def error(status: int, message: str) -> str:
        return frame(APIError(status, message).body())

    frames = respond.stream(model, job, render, error, done=lambda: "" if ndjson else "data: [DONE]\n\n")
    return respond.EventStream(frames, media_type=NDJSON if ndjson else "text/event-stream",
                               headers=respond.SSE_HEADERS)
