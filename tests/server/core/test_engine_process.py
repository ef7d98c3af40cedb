"""One engine process from the API process's side: it reports when it is ready, passes
on the engine's steps, writes a thread share at once, tells its owner when it exits, and
is killed when it takes longer to start than it may."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from charnet.inference.request import GenerationRequest
from charnet.server.core.engine_process import EngineProcess
from charnet.server.core.process import CoreSpec
from charnet.server.core.protocol import Generate, Share
from tests.serving import MODEL, until

pytestmark = pytest.mark.anyio


def spec(path) -> CoreSpec:
    return CoreSpec(name=MODEL, path=str(path), device="cpu", cache_bytes=1 << 20, max_concurrency=4, max_n=2,
                    timeout=60.0, threads=1, env={})


async def test_started_engine_streams_steps_and_reports_its_exit(checkpoint):
    steps, exited = [], asyncio.Event()
    engine = EngineProcess(spec(checkpoint), on_step=steps.append, on_exit=lambda e: exited.set())
    try:
        assert await engine.wait_started(120) is None
        engine.send(Generate(job=7, groups=[(GenerationRequest.of("ab", max_chars=5, seed=1), 1)], timeout=60.0))
        await until(lambda: any(out.end for step in steps for _, out in step.events))
        ours = [(job, out) for step in steps for job, out in step.events]
        assert {job for job, _ in ours} == {7} and len("".join(out.text for _, out in ours)) == 5
        os.kill(engine.pid, signal.SIGKILL)
        await asyncio.wait_for(exited.wait(), 30)
        assert engine.process.exitcode == -signal.SIGKILL
    finally:
        await engine.dispose()


async def test_a_share_is_written_at_once_with_the_commands_queued_before_it(checkpoint):
    steps = []
    engine = EngineProcess(spec(checkpoint), on_step=steps.append, on_exit=lambda e: None)
    try:
        assert await engine.wait_started(120) is None
        engine.send(Generate(job=7, groups=[(GenerationRequest.of("ab", max_chars=5, seed=1), 1)], timeout=60.0))
        engine.send(Share(threads=1))
        # This turn of the event loop goes on, and the engine is killed before it ends:
        # only what was written meanwhile reached it.
        time.sleep(2)
        os.kill(engine.pid, signal.SIGKILL)
        await until(lambda: any(out.end for step in steps for _, out in step.events))  # its steps were sent
    finally:
        await engine.dispose()


async def test_an_engine_slower_to_start_than_allowed_is_reported_and_killed(checkpoint):
    exits = []
    engine = EngineProcess(spec(checkpoint), on_step=lambda step: None, on_exit=exits.append)
    # Loading and warming up take over a second; 0.2 s is also long past the instant
    # after the fork when a kill loses the exit status (the forkserver reports 255).
    why = await engine.wait_started(0.2)
    assert why == "the engine process was not ready within 0.2 s"
    await engine.dispose()
    assert not engine.process.is_alive() and engine.process.exitcode == -signal.SIGKILL
    await until(lambda: exits == [engine])  # the watching thread's word reaches the loop


async def test_an_engine_that_cannot_load_its_model_says_why(tmp_path):
    engine = EngineProcess(spec(tmp_path / "missing"), on_step=lambda step: None, on_exit=lambda e: None)
    why = await engine.wait_started(120)
    await engine.dispose()
    assert why and "missing" in why
