"""The connection between the API process and an engine process: a socket pair carrying
length-prefixed frames (a 4-byte little-endian length, then a msgspec message).

Why not ZeroMQ, which vLLM uses: there is exactly one peer, on the same machine, and
ZeroMQ moves every message through an I/O thread in each process. On a 2-core machine
those threads' wakeups land on the engine's critical path: measured at 64 streaming
clients, 10% of the engine process's time went into `zmq.Socket.send` while its
main thread was pushed off its core. Here the engine writes straight into the kernel's
socket buffer from its own thread and the API process reads it on its event loop:
no thread in between. The socket also tells each side when the other is gone (end of
file), however it went.
"""

from __future__ import annotations

import asyncio
import struct

HEADER = struct.Struct("<I")
"""Each frame's length, in bytes."""


def frame(payload: bytes) -> bytes:
    """`payload` as one frame."""
    return HEADER.pack(len(payload)) + payload


class Frames:
    """Splits a byte stream into frames as the bytes come in (for a blocking socket)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Take `data`; return the frames it completed."""
        self._buffer += data
        frames, at = [], 0
        while len(self._buffer) - at >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer, at)
            if len(self._buffer) - at - HEADER.size < size:
                break
            at += HEADER.size
            frames.append(bytes(self._buffer[at:at + size]))
            at += size
        del self._buffer[:at]
        return frames


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next frame; `asyncio.IncompleteReadError` at the end of the stream."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return await reader.readexactly(size)
