"""A lean HTTP/1.1 client on raw asyncio streams, for load generators.

A load generator on the server's own two cores competes with it for CPU: httpx spends
several times what this does per response, and that shows up as server latency. This
client keeps one keep-alive connection, writes a request, and parses only what it must:
the status line, Content-Length or chunked framing, and Server-Sent Events frames.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import AsyncIterator


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    at: float = field(default_factory=time.perf_counter)
    """When its status line and headers had been read (time.perf_counter)."""

    def json(self):
        return json.loads(self.body)


class Connection:
    """One keep-alive connection to `host:port`, reopened when the server closes it."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port, self.extra = host, port, headers or {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.response: Response | None = None
        """The head of the latest response (while `events` streams its body too)."""

    async def _open(self) -> None:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 24)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None

    async def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Response:
        await self._open()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 *(f"{k}: {v}" for k, v in {**self.extra, **headers}.items())]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        head: dict[str, str] = {}
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            head[name.strip().lower()] = value.strip()
        self.response = Response(status, head)
        return self.response

    async def _chunks(self, response: Response) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        if "content-length" in response.headers:
            yield await self._reader.readexactly(int(response.headers["content-length"]))
        elif response.headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self._reader.readline()).split(b";")[0], 16)
                data = await self._reader.readexactly(size + 2)
                if not size:
                    break
                yield data[:-2]
        else:  # read to the end of the connection
            while data := await self._reader.read(1 << 16):
                yield data
            await self.close()
        if response.headers.get("connection") == "close":
            await self.close()

    async def request(self, method: str, path: str, body=None, headers: dict[str, str] | None = None) -> Response:
        """A whole response. `body` is bytes, or anything JSON encodes."""
        raw = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        response = await self._send(method, path, raw, headers or {})
        response.body = b"".join([chunk async for chunk in self._chunks(response)])
        return response

    async def events(self, path: str, body, headers: dict[str, str] | None = None) -> AsyncIterator[dict | str]:
        """POST `body` and yield each Server-Sent Event's JSON (and the final "[DONE]");
        an error status yields {"status": code, "body": ...} alone."""
        raw = json.dumps(body).encode()
        response = await self._send("POST", path, raw, headers or {})
        if response.status != 200:
            data = b"".join([chunk async for chunk in self._chunks(response)])
            yield {"status": response.status, "body": data[:300].decode("utf-8", "replace")}
            return
        pending = b""
        async for chunk in self._chunks(response):
            pending += chunk
            *frames, pending = pending.split(b"\n\n")
            for frame in frames:
                payload = frame.removeprefix(b"data: ")
                yield "[DONE]" if payload == b"[DONE]" else json.loads(payload)
