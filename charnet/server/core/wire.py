"""The connection between the API process and an engine process: a socket pair carrying
length-prefixed frames (a 4-byte little-endian length, then a msgspec message). The API
process writes the commands of one turn of its event loop together (`Outbox`); the
engine reads them on a thread of its own (`Inbox`).

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
import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("charnet.server")

HEADER = struct.Struct("<I")
"""Each frame's length, in bytes."""

GATHER_S = 0.002
"""Longest a frame waits in an `Outbox` for the rest of its event-loop turn."""


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


class Outbox:
    """Frames put on the event loop, written together once the loop's turn is over (a
    callback queued behind the turn's ready work), or at once when the oldest has waited
    `GATHER_S`.

    Why: the API process's CPU is what a burst of requests waits for, and each command
    written alone cost it a loopback write and woke the engine process on the other core
    for one message. Gathered, the 68 commands of a burst of 64 streams (the requests and
    the engines' thread shares) went out in 15-16 writes, and the API process spent
    26.7 ms of CPU on a burst of 64 two-character streams against 29.2-30.8 ms (two paired
    runs of 12 bursts). The bound keeps a long turn from holding the first commands back:
    a prompt the engine must prime starts priming within `GATHER_S` of its arrival. A
    frame that must not wait for the turn's end is put `at_once`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, write: Callable[[bytes], None]) -> None:
        """`write`: the transport's write (called with several frames at once)."""
        self._loop, self._write = loop, write
        self._frames: list[bytes] = []
        self._oldest = 0.0

    def put(self, payload: bytes, at_once: bool = False) -> None:
        """Queue `payload` as a frame; `at_once`: write it now, with those queued before it."""
        self._frames.append(frame(payload))
        if at_once:
            self.flush()
            return
        now = time.monotonic()
        if len(self._frames) == 1:
            self._oldest = now
            self._loop.call_soon(self.flush)
        elif now - self._oldest >= GATHER_S:
            self.flush()

    def flush(self) -> None:
        """Write what is queued."""
        if self._frames:
            data = b"".join(self._frames)
            self._frames.clear()
            self._write(data)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next frame; `asyncio.IncompleteReadError` at the end of the stream."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return await reader.readexactly(size)


class Inbox:
    """Messages read off a blocking socket by a thread of its own, decoded and queued.

    The engine looks for commands before every step. Asking the socket (a `select` call a
    round) cost one streaming client 6% of its speed on 2 cores, in the engine process
    alone (5,654 against 6,015 chars/s, medians of six paired runs): a system call a
    step, and what it evicts. Looking at `items` costs nothing; the thread sleeps in
    `recv` until bytes come, and takes the interpreter lock while the step's products run
    without it (39 us from the bytes' arrival to their decoding, median; 123 us p99)."""

    def __init__(self, channel: socket.socket, decode: Callable[[bytes], object]) -> None:
        self.items: deque = deque()
        """What has arrived, oldest first (`take` empties it)."""
        self.closed = False
        """Nothing more will come: the other end closed, or sent a frame that would not
        decode (set after the last item is queued)."""
        self._arrived = threading.Event()
        threading.Thread(target=self._read, args=(channel, decode), name="charnet-inbox", daemon=True).start()

    def wait(self) -> None:
        """Block until something has arrived, or the socket has closed, since the last
        wait (it may return at once for what a `take` since has already taken)."""
        self._arrived.wait()
        self._arrived.clear()  # what comes after this is in `items` or sets it again

    def take(self) -> list:
        """Everything queued, oldest first."""
        items = self.items
        return [items.popleft() for _ in range(len(items))]

    def _read(self, channel: socket.socket, decode: Callable[[bytes], object]) -> None:
        frames = Frames()
        try:
            while data := channel.recv(1 << 16):
                for payload in frames.feed(data):
                    self.items.append(decode(payload))
                self._arrived.set()
        except OSError:  # the socket closed under us: this process is ending
            pass
        except Exception:  # a message that does not decode: a bug, so stop listening
            log.exception("a message from the other process could not be read")
        finally:
            self.closed = True
            self._arrived.set()
