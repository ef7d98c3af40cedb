"""Frames between the API process and an engine process: whatever way the bytes arrive
(split anywhere, several frames at once), each side reads exactly the frames written,
over a real socket pair, and the end of the stream is told apart from a frame."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from charnet.server.core.wire import Frames, frame, read_frame

PAYLOADS = [b"", b"x", bytes(range(256)) * 300, "ROMEO: ü 🙂".encode(), b"\x00\x00\x00\x00"]


def test_frames_survive_any_split_of_the_stream():
    stream = b"".join(frame(p) for p in PAYLOADS)
    rng = random.Random(0)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), 6))
        frames = Frames()
        got = [f for a, b in zip([0, *cuts], [*cuts, len(stream)]) for f in frames.feed(stream[a:b])]
        assert got == PAYLOADS
    whole = Frames()
    assert whole.feed(stream) == PAYLOADS and whole.feed(b"") == []


def test_a_partial_frame_waits_for_the_rest():
    frames = Frames()
    data = frame(b"hello")
    assert frames.feed(data[:2]) == [] and frames.feed(data[2:6]) == [] and frames.feed(data[6:]) == [b"hello"]


@pytest.mark.anyio
async def test_read_frame_over_a_socket_pair_until_the_peer_is_gone():
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        theirs.sendall(b"".join(frame(p) for p in PAYLOADS))
        assert [await read_frame(reader) for _ in PAYLOADS] == PAYLOADS
        theirs.sendall(frame(b"cut short")[:6])
        theirs.close()  # gone mid-frame: the end, not a frame
        with pytest.raises(asyncio.IncompleteReadError):
            await read_frame(reader)
    finally:
        writer.close()
