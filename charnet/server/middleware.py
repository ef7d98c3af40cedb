"""ASGI middleware that acts before any route reads a request: the API key, the body limit.

Both answer from the headers alone, so a client without the key, or with a body over
the limit, costs the server no body read and no JSON parse.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from charnet.server.errors import APIError, BodyTooLarge

PROTECTED = "/v1/"
"""Paths that need the key when the server has one; /health, /ready, /metrics, the
playground and the API docs stay open, for load balancers, scrapers and people."""


async def send_error(send: Send, error: APIError) -> None:
    """Answer `error` in OpenAI's shape and close the connection."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiKey:
    """401 unless a request to /v1/ carries ``Authorization: Bearer <key>`` (compared in
    constant time), before anything reads its body."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app, self.key = app, key.encode("utf-8") if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        message = "missing API key: send Authorization: Bearer <key>" if not given else "invalid API key"
        await send_error(send, APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413 before anything parses them: at once
    from Content-Length, or as soon as a chunked body grows past the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await send_error(send, APIError(400, "invalid Content-Length header"))
                return
            if int(length) > self.limit:
                await send_error(send, APIError(413, f"request body exceeds the server's limit of {self.limit} "
                                                     "bytes", code="body_too_large"))
                return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)
