"""A streamed response (`EventStream`): its last chunk goes out with the end of the body,
a client that goes away cancels the body at once, and a body's error is the response's."""

from __future__ import annotations

import asyncio

import pytest

from charnet.server.respond import EventStream, Last

pytestmark = pytest.mark.anyio


async def respond(response: EventStream, receive) -> list[tuple]:
    """Run `response` as uvicorn would (ASGI 2.3); the messages it sent."""
    sent = []

    async def send(message: dict) -> None:
        sent.append((message["type"], message.get("body"), message.get("more_body")))

    await asyncio.wait_for(response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send), 10)
    return sent


async def connected() -> dict:
    await asyncio.Event().wait()  # the client stays
    raise AssertionError("unreachable")


async def test_the_last_chunk_is_written_with_the_end_of_the_body():
    async def body():
        yield "data: a\n\n"
        yield Last("data: b\n\ndata: [DONE]\n\n")

    assert await respond(EventStream(body()), connected) == [
        ("http.response.start", None, None), ("http.response.body", b"data: a\n\n", True),
        ("http.response.body", b"data: b\n\ndata: [DONE]\n\n", False)]


async def test_a_body_without_a_last_chunk_is_ended_after_it():
    async def body():
        yield "a"

    assert await respond(EventStream(body()), connected) == [
        ("http.response.start", None, None), ("http.response.body", b"a", True), ("http.response.body", b"", False)]


async def test_a_client_that_goes_away_cancels_the_body():
    first_out, closed = asyncio.Event(), asyncio.Event()

    async def body():
        try:
            yield "a"
            first_out.set()
            await asyncio.Event().wait()  # events that will not come
            yield "never"
        finally:
            closed.set()

    async def receive() -> dict:
        await first_out.wait()
        return {"type": "http.disconnect"}

    sent = await respond(EventStream(body()), receive)
    assert closed.is_set() and sent == [("http.response.start", None, None), ("http.response.body", b"a", True)]


async def test_a_failing_body_fails_the_response():
    async def body():
        yield "a"
        raise RuntimeError("the body broke")

    with pytest.raises(RuntimeError, match="the body broke"):
        await respond(EventStream(body()), connected)
