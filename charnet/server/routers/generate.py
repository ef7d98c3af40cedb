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

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from charnet.server import jobs
from charnet.server.deps import ReadyState, lookup_model, require_key
from charnet.server.errors import APIError
from charnet.server.routers import ERRORS
from charnet.server.scheduler import Out
from charnet.server.schemas import GenerateRequest, GenerateResponse

router = APIRouter(prefix="/v1", tags=["generate"], dependencies=[Depends(require_key)])

NAMES = {"max_chars": "length"}
NDJSON = "application/x-ndjson"


def _logprobs(events: list[Out]) -> list[dict[str, Any]]:
    return [{"text": lp.text, "logprob": jobs.finite(lp.logprob), "top": [(t, jobs.finite(v)) for t, v in lp.top]}
            for e in events for lp in e.logprobs]


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True, responses={
    200: {"description": "The generation; with `stream`, events of the same shape as SSE (default) or NDJSON.",
          "content": {"text/event-stream": {"schema": {"type": "string"}},
                      NDJSON: {"schema": {"type": "string"}}}}, **ERRORS})
async def generate(body: GenerateRequest, http: Request, state: ReadyState) -> Any:
    """Continue a prompt with charnet's sampling settings."""
    model = lookup_model(state, body.model)
    request = jobs.engine_request(body.prompt, max_chars=body.length, cap=state.settings.max_chars_cap,
                                  length_field="length", names=NAMES, temperature=body.temperature,
                                  top_k=body.top_k, top_p=body.top_p, repetition_penalty=body.repetition_penalty,
                                  seed=body.seed, stop=body.stop,
                                  logprobs=body.logprobs)
    job = jobs.submit(http, model, [(request, 1)])

    def event(events: list[Out], text: str) -> dict[str, Any]:
        seq = job.seqs[0]
        out = {"model": model.name, "text": text,
               "finish_reason": next((e.finish_reason for e in events if e.finish_reason), None),
               "seed": seq.seed, "prompt_chars": seq.prompt_tokens, "generated_chars": seq.generated}
        if body.logprobs is not None:
            out["logprobs"] = _logprobs(events)
        return out

    if not body.stream:
        events = await jobs.collect(http, model, job)
        return event(events, "".join(e.text for e in events))

    ndjson = NDJSON in http.headers.get("accept", "")

    def frame(data: dict) -> str:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n" if ndjson else jobs.sse(data)

    def render(events: list[Out]) -> list[str]:
        if not any(e.text or e.finish_reason or e.logprobs for e in events):
            return []
        return [frame(event(events, "".join(e.text for e in events)))]

    def error(status: int, message: str) -> str:
        return frame(APIError(status, message).body())

    frames = jobs.stream(model, job, render, error, done=None if ndjson else "data: [DONE]\n\n",
                         interval=state.settings.stream_interval)
    return StreamingResponse(frames,
                             media_type=NDJSON if ndjson else "text/event-stream",
                             headers=jobs.SSE_HEADERS)
