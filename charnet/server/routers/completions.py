"""`POST /v1/completions`: OpenAI's legacy completions API, streamed or not."""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import APIRouter, Request

from charnet.server import respond
from charnet.server.deps import Model, ReadyState, lookup_model
from charnet.server.errors import APIError
from charnet.server.routers import ERRORS, SSE_EVENT
from charnet.server.job import Job, Out
from charnet.server.responses import CompletionResponse
from charnet.server.schemas import CompletionRequest


router = APIRouter(prefix="/v1", tags=["completions"])


def _by_index(events: list[Out]) -> dict[int, list[Out]]:
    """Events grouped by choice index, each group in order."""
    grouped: dict[int, list[Out]] = {}
    for event in events:
        grouped.setdefault(event.index, []).append(event)
    return grouped


class _Choices:
    """Builds choices (whole, or as stream chunks) from engine events."""

    def __init__(self, body: CompletionRequest, job: Job, vocab_kind: str) -> None:
        self.body, self.prompts, self.job = body, body.prompts(), job
        self.n = body.n or 1
        self.per_char = vocab_kind == "char"  # one log-probability per character of text
        self.offsets = [len(self.prompt(i)) if body.echo else 0 for i in range(len(self.prompts) * self.n)]
        self.generated = [0] * (len(self.prompts) * self.n)  # tokens each choice has generated

    def prompt(self, index: int) -> str:
        return self.prompts[index // self.n]

    def logprobs(self, index: int, events: list[Out], echo: bool) -> dict[str, Any] | None:
        if self.body.logprobs is None:
            return None
        tokens, values, tops, offsets = [], [], [], []
        if echo:  # prompt characters: shown, not scored
            for k, ch in enumerate(self.prompt(index)):
                tokens.append(ch), values.append(None), tops.append(None), offsets.append(k)
        for event in events:
            start = self.offsets[index]
            for k, lp in enumerate(event.logprobs):
                tokens.append(lp.text)
                values.append(respond.finite(lp.logprob))
                top = {text: respond.finite(v) for text, v in lp.top}
                top.setdefault(lp.text, respond.finite(lp.logprob))
                tops.append(top)
                offsets.append(start + k if self.per_char else start)
            self.offsets[index] += len(event.text)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    def usage(self) -> dict[str, int]:
        prompt = sum(self.job.choices[g * self.n].prompt_tokens for g in range(len(self.prompts)))
        completion = sum(self.generated)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self, events: list[Out]) -> list[dict[str, Any]]:
        choices = []
        by_index = _by_index(events)
        for index in range(len(self.prompts) * self.n):
            mine = by_index.get(index, [])
            self.generated[index] = max((e.generated for e in mine), default=0)
            text = "".join(e.text for e in mine)
            finish = next((e.finish_reason for e in mine if e.finish_reason), None)
            choices.append({"index": index, "text": (self.prompt(index) if self.body.echo else "") + text,
                            "logprobs": self.logprobs(index, mine, bool(self.body.echo)),
                            "finish_reason": finish})
        return choices

    def chunk_choices(self, events: list[Out]) -> list[dict[str, Any]]:
        """One choice entry per choice index that had news, in index order."""
        for event in events:
            self.generated[event.index] = max(self.generated[event.index], event.generated)
        return [{"index": index, "text": "".join(e.text for e in mine),
                 "logprobs": self.logprobs(index, mine, False),
                 "finish_reason": next((e.finish_reason for e in mine if e.finish_reason), None)}
                for index, mine in sorted(_by_index(events).items())]

    def echo_choices(self) -> list[dict[str, Any]]:
        return [{"index": i, "text": self.prompt(i), "logprobs": self.logprobs(i, [], True), "finish_reason": None}
                for i in range(len(self.prompts) * self.n)]


@router.post("/completions", response_model=CompletionResponse, responses={
    200: {"description": "The completion; with `stream`, Server-Sent Events of chunks in the same shape, "
                         "then `data: [DONE]`.",
          "content": {"text/event-stream": {"schema": SSE_EVENT}}}, **ERRORS})
async def create_completion(body: CompletionRequest, http: Request, state: ReadyState) -> Any:
    """Continue a prompt (OpenAI's legacy completions). One token is one character."""
    model: Model = lookup_model(state, body.model)
    settings = state.settings
    groups = body.engine_groups(respond.limits(settings, model.vocab.size), settings.max_response_tokens,
                              model.vocab)
    job = respond.submit(http, model, groups, bool(body.stream))
    head = {"id": f"cmpl-{os.urandom(16).hex()}", "object": "text_completion", "created": int(time.time()),
            "model": model.name}
    choices = _Choices(body, job, model.vocab.kind)
    if not body.stream:
        events = await respond.collect(http, model, job)
        return await respond.json_response(lambda: {**head, "choices": choices.whole(events), "usage": choices.usage()},
                                           body.response_entries)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    echoed = [False]

    def render(events: list[Out]) -> list[str]:
        frames = []
        if body.echo and not echoed[0]:
            echoed[0] = True
            frames.append(respond.sse({**head, "choices": choices.echo_choices(), **extra}))
        for choice in choices.chunk_choices(events):
            frames.append(respond.sse({**head, "choices": [choice], **extra}))
        return frames

    def error(status: int, message: str) -> str:
        return respond.sse(APIError(status, message).body())

    def done() -> str:
        usage = include_usage and job.failed is None
        return (respond.sse({**head, "choices": [], "usage": choices.usage()}) if usage else "") + "data: [DONE]\n\n"

    return respond.EventStream(respond.stream(model, job, render, error, done), media_type="text/event-stream",
                               headers=respond.SSE_HEADERS)
