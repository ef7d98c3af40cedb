"""Frames between the API process and an engine process: whatever way the bytes arrive
(split anywhere, several frames at once), each side reads exactly the frames written,
over a real socket pair, and the end of the stream is told apart from a frame; the API
process's outbox writes a turn's frames together, the oldest never held past its bound;
the engine's inbox queues what a thread reads, in order, and says when nothing more comes."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time

import pytest

from charnet.server.core.wire import GATHER_S, Frames, Inbox, Outbox, frame, read_frame

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


@pytest.mark.anyio
async def test_an_outbox_writes_the_frames_of_one_turn_together_after_it():
    writes: list[bytes] = []
    outbox = Outbox(asyncio.get_running_loop(), writes.append)
    for payload in PAYLOADS:
        outbox.put(payload)
    assert writes == []  # the turn is not over
    await asyncio.sleep(0)
    assert len(writes) == 1 and Frames().feed(writes[0]) == PAYLOADS
    outbox.put(b"next turn")
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # a second flush finds nothing more to write
    assert writes[1:] == [frame(b"next turn")]


@pytest.mark.anyio
async def test_an_outbox_holds_no_frame_past_its_bound_in_a_long_turn():
    writes: list[bytes] = []
    outbox = Outbox(asyncio.get_running_loop(), writes.append)
    outbox.put(b"first")
    time.sleep(GATHER_S * 1.5)  # a turn busy for longer than the bound
    outbox.put(b"second")
    assert writes == [frame(b"first") + frame(b"second")]
    outbox.put(b"third")  # the bound counts again from the oldest frame still queued
    assert len(writes) == 1
    await asyncio.sleep(0)
    assert writes[1:] == [frame(b"third")]


@pytest.mark.anyio
async def test_an_outbox_writes_a_frame_put_at_once_now_after_those_queued_before_it():
    writes: list[bytes] = []
    outbox = Outbox(asyncio.get_running_loop(), writes.append)
    outbox.put(b"gathered")
    outbox.put(b"urgent", at_once=True)
    assert writes == [frame(b"gathered") + frame(b"urgent")]  # in this turn, in order
    outbox.put(b"later")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert writes[1:] == [frame(b"later")]  # nothing written twice


@pytest.mark.anyio
async def test_an_outbox_over_a_socket_pair_delivers_every_frame_in_order():
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    outbox = Outbox(asyncio.get_running_loop(), writer.write)
    try:
        for payload in PAYLOADS:
            outbox.put(payload)
            if payload == b"x":
                await asyncio.sleep(0)  # over two turns
        await asyncio.sleep(0)
        theirs.settimeout(5)
        frames, got = Frames(), []
        while len(got) < len(PAYLOADS):
            got += frames.feed(theirs.recv(1 << 20))
        assert got == PAYLOADS
    finally:
        writer.close()
        theirs.close()


def test_an_inbox_queues_decoded_messages_in_order_then_closes_at_the_end():
    ours, theirs = socket.socketpair()
    inbox = Inbox(ours, lambda payload: payload.decode())
    texts = ["ROMEO: ü 🙂", "", "x" * 100_000]
    stream = b"".join(frame(t.encode()) for t in texts)
    theirs.sendall(stream[:7])  # split mid-frame: nothing is queued until a frame is whole
    time.sleep(0.05)
    assert not inbox.items and not inbox.closed
    theirs.sendall(stream[7:])
    got = []
    while len(got) < len(texts):
        inbox.wait()
        got += inbox.take()
    assert got == texts and not inbox.closed
    theirs.close()
    deadline = time.monotonic() + 10
    while not inbox.closed and time.monotonic() < deadline:
        inbox.wait()
    assert inbox.closed and inbox.take() == []
    ours.close()


def test_an_inbox_waits_again_once_what_woke_it_is_taken():
    """The engine takes commands between steps without waiting; once idle it must sleep
    until the next one, not wake again for those it has already taken."""
    ours, theirs = socket.socketpair()
    inbox = Inbox(ours, lambda payload: payload.decode())
    theirs.sendall(frame(b"one"))
    deadline = time.monotonic() + 10
    while not inbox.items and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)  # the reader has announced it too
    assert inbox.take() == ["one"]
    inbox.wait()  # the announcement of what was taken
    woke = []
    waiter = threading.Thread(target=lambda: (inbox.wait(), woke.append(inbox.take())), daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not woke  # asleep: nothing new has come
    theirs.sendall(frame(b"two"))
    waiter.join(10)
    assert woke == [["two"]]
    ours.close()
    theirs.close()


def test_an_inbox_stops_at_a_message_that_does_not_decode():
    ours, theirs = socket.socketpair()
    inbox = Inbox(ours, lambda payload: payload.decode())
    theirs.sendall(frame(b"fine") + frame(b"\xff\xfe") + frame(b"never read"))
    deadline = time.monotonic() + 10
    while not inbox.closed and time.monotonic() < deadline:
        inbox.wait()
    assert inbox.closed and inbox.take() == ["fine"]
    ours.close()
    theirs.close()
