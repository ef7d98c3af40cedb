"""A request's inbox in the API process: deliveries wake its route for the first events,
the end, and otherwise once most of its pace has passed since it last took events."""

from __future__ import annotations

import asyncio
import math

import pytest

from charnet.inference.request import GenerationRequest
from charnet.server.core.protocol import Out
from charnet.server.job import DUE_EARLY, Job
from charnet.server.metrics import Metrics

pytestmark = pytest.mark.anyio


def job(pace: float) -> Job:
    return Job([(GenerationRequest.of("a", max_chars=5), 1)], 60.0, Metrics().of("m"), pace)


async def woken(j: Job) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(j.wakeup.wait()), 0.01)
        return True
    except asyncio.TimeoutError:
        return False


async def test_a_stream_is_woken_when_most_of_its_pace_has_passed():
    j = job(0.2)
    j._deliver(Out(text="a"))
    assert await woken(j) and [o.text for o in await j.next_events()] == ["a"]
    j._deliver(Out(text="b"))
    assert not await woken(j)  # too soon: it gathers
    await asyncio.sleep(DUE_EARLY * 0.2)
    j._deliver(Out(text="c"))  # an engine message a pace later, come a little early by our clock
    assert await woken(j) and [o.text for o in await j.next_events()] == ["b", "c"]
    j._deliver(Out(end=True))
    assert await woken(j) and (await j.next_events())[-1].end and await j.next_events() == []


async def test_a_whole_response_is_woken_for_its_first_events_and_its_end_only():
    j = job(math.inf)
    j._deliver(Out(text="a"))
    assert await woken(j)
    await j.next_events()
    for text in "bcd":
        j._deliver(Out(text=text))
    assert not await woken(j)
    j._deliver(Out(end=True))
    assert await woken(j) and [o.text for o in await j.next_events()] == ["b", "c", "d", ""]
