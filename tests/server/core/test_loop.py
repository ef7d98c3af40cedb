"""The engine loop (`EngineCore`) driven in this process, round by round: isolation of
failures, cancellation, deadlines, shutdown and scoring's share. (Through HTTP and a real
engine process: tests/server/core/test_client.py and tests/server/test_batching.py.)"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict

import numpy as np
import pytest

from charnet.inference.engine import Engine
from charnet.inference.prompt_cache import PromptCache
from charnet.inference.request import GenerationRequest
from charnet.inference.scoring import Scorer, score_ids
from charnet.server.core import loop
from charnet.server.core.loop import EngineCore
from charnet.server.core.protocol import SHUTTING_DOWN, Cancel, Generate, ScoreText, Shutdown
from tests.conftest import BAD_TOP_P

PROMPT = "ROMEO:\nBut soft"
_jobs = itertools.count(1)


@pytest.fixture
def core(checkpoint) -> EngineCore:
    return EngineCore(Engine.open(checkpoint), max_concurrency=8, max_n=4, timeout=600)


def generate(prompt: str = PROMPT, n: int = 1, timeout: float = 600, pace: float = 0.0, **settings) -> Generate:
    return Generate(job=next(_jobs), groups=[(GenerationRequest.of(prompt, **settings), n)], timeout=timeout,
                    pace=pace)


class Run:
    """What the loop said, by job, over the rounds it was driven."""

    def __init__(self) -> None:
        self.events = defaultdict(list)
        self.choices = {}
        self.rounds = 0

    def drive(self, core: EngineCore, until=None, limit: int = 100_000, every: int = 1) -> Run:
        """Iterate until the loop is idle (or `until()` holds), taking its news every
        `every` rounds and at the end."""
        while core.busy and not (until and until()):
            core.iterate()
            self.rounds += 1
            assert self.rounds < limit
            if self.rounds % every == 0:
                self.read(core.take())
        self.read(core.take())
        return self

    def read(self, step) -> None:
        if step is not None:
            self.choices.update(step.started)
            for job, out in step.events:
                self.events[job].append(out)

    def text(self, job: int, index: int = 0) -> str:
        return "".join(o.text for o in self.events[job] if o.index == index)

    def ended(self, job: int):
        """The request's final event (None while it runs)."""
        last = self.events[job][-1] if self.events[job] else None
        return last if last is not None and last.end else None


def test_requests_in_one_batch_equal_their_solo_runs(core, solo):
    requests = [generate(PROMPT[: 3 + i], max_chars=30 + 3 * i, seed=i, top_p=0.9, repetition_penalty=1 + 0.1 * (i % 3))
                for i in range(12)]
    for r in requests:
        core.receive(r)
    run = Run().drive(core)
    for i, r in enumerate(requests):
        assert run.ended(r.job).error is None
        assert run.text(r.job) == solo(PROMPT[: 3 + i], max_chars=30 + 3 * i, seed=i, top_p=0.9,
                                       repetition_penalty=1 + 0.1 * (i % 3)).text
    assert run.choices[requests[0].job][0].seed == 0 and run.choices[requests[0].job][0].prompt_tokens == 3


def test_a_messages_rounds_give_each_choice_one_event_with_its_solo_text(core, solo):
    """News taken every 25 rounds, as a stream's message every 20 ms carries 100 or so:
    a choice's characters from those rounds arrive as one event."""
    requests = [generate(PROMPT[: 4 + i], n=2, max_chars=60 + 7 * i, seed=i) for i in range(3)]
    for r in requests:
        core.receive(r)
    run = Run().drive(core, every=25)
    for i, r in enumerate(requests):
        alone = solo(PROMPT[: 4 + i], num_samples=2, max_chars=60 + 7 * i, seed=i)
        for index in range(2):
            pieces = [o for o in run.events[r.job] if o.index == index]
            assert run.text(r.job, index) == alone[index].text
            assert len(pieces) <= run.rounds // 25 + 2 and max(len(o.text) for o in pieces) > 1
            assert pieces[-1].finish_reason == "length" and pieces[-1].generated == 60 + 7 * i
        assert run.ended(r.job).error is None


def test_characters_with_log_probabilities_stay_an_event_each(core):
    request = generate(max_chars=30, seed=5, logprobs=2)
    core.receive(request)
    run = Run().drive(core, every=25)
    scored = [o for o in run.events[request.job] if o.logprobs]
    assert len(scored) == 30 and all(len(o.logprobs) == 1 for o in scored)
    assert "".join(o.logprobs[0].text for o in scored) == run.text(request.job)


def test_a_failing_generation_fails_only_its_request(core, boom, solo):
    good, bad = generate(max_chars=200, seed=4), generate("boom", max_chars=200, seed=4)
    core.receive(good)
    core.receive(bad)
    run = Run().drive(core)
    assert run.ended(bad.job).error == (500, "generation failed: RuntimeError")
    assert run.text(good.job) == solo(PROMPT, max_chars=200, seed=4).text


@pytest.mark.parametrize("where", ["lookup", "put"])
def test_a_failing_prime_fails_only_its_request(core, monkeypatch, where):
    # Starting (the cache lookup) or priming (caching a mark) fails for the 13-character
    # prompt only: that request fails, the one beside it does not.
    real = getattr(PromptCache, where)

    def failing(self, ids, *args):
        if len(ids) == 13:
            raise MemoryError("injected")
        return real(self, ids, *args)

    monkeypatch.setattr(PromptCache, where, failing)
    bad, good = generate("13 characters", max_chars=20), generate("fine", max_chars=20)
    core.receive(bad)
    core.receive(good)
    run = Run().drive(core)
    assert run.ended(bad.job).error[0] == 500 and run.ended(good.job).error is None
    assert len(run.text(good.job)) == 20


def test_a_failing_draw_fails_only_its_row(core, failing_draw, solo):
    good, bad = generate(max_chars=200, seed=4), generate(max_chars=200, seed=4, top_p=BAD_TOP_P)
    core.receive(good)
    core.receive(bad)
    run = Run().drive(core)
    assert run.ended(bad.job).error[0] == 500
    assert run.text(good.job) == solo(PROMPT, max_chars=200, seed=4).text


def test_settings_the_model_cannot_take_fail_at_the_start_with_400(core):
    vocab = core.engine.vocab.size
    bad, good = generate(max_chars=5, top_k=vocab + 1), generate(max_chars=5)
    core.receive(bad)
    core.receive(good)
    run = Run().drive(core)
    status, message = run.ended(bad.job).error
    assert status == 400 and "top_k" in message and bad.job not in run.choices
    assert run.ended(good.job).error is None


def test_a_failing_batched_step_fails_the_requests_in_it_and_the_loop_carries_on(core, monkeypatch, solo):
    real = core.engine.kernel.step
    calls = itertools.count()

    def step(*args, **kwargs):
        if next(calls) == 3:
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(core.engine.kernel, "step", step)
    first, second = generate(max_chars=50), generate("x", max_chars=50)
    core.receive(first)
    core.receive(second)
    run = Run().drive(core)
    assert run.ended(first.job).error == run.ended(second.job).error == (500, "internal error in the batched step")
    after = generate(max_chars=20, seed=2)
    core.receive(after)
    assert Run().drive(core).text(after.job) == solo(PROMPT, max_chars=20, seed=2).text


def test_a_bug_in_the_loop_fails_what_runs_and_the_loop_carries_on(core, monkeypatch):
    real = EngineCore._score_turn  # runs every round
    calls = itertools.count()

    def score_turn(self, stepped):
        if next(calls) == 5:
            raise KeyError("a bug")
        return real(self, stepped)

    monkeypatch.setattr(EngineCore, "_score_turn", score_turn)
    running = generate(max_chars=50)
    core.receive(running)
    run = Run().drive(core)
    assert run.ended(running.job).error == (500, "internal error in the generation loop")
    again = generate(max_chars=5)
    core.receive(again)
    assert Run().drive(core).ended(again.job).error is None


def test_a_cancelled_request_leaves_before_the_next_step_and_says_nothing_more(core):
    gone, stays = generate(max_chars=10_000), generate(max_chars=30)
    core.receive(gone)
    core.receive(stays)
    run = Run()
    run.drive(core, until=lambda: len(run.text(gone.job)) >= 5)
    said = len(run.events[gone.job])
    core.receive(Cancel(job=gone.job))
    core.iterate()
    step = core.take()
    assert step.stats.rows == 1 and all(job != gone.job for job, _ in step.events)
    run.drive(core)
    assert len(run.events[gone.job]) == said and run.ended(stays.job).error is None
    queued = generate(max_chars=10)  # cancelled before it ever ran
    core.receive(queued)
    core.receive(Cancel(job=queued.job))
    assert not Run().drive(core).events[queued.job] and not core.busy


def test_a_request_past_its_deadline_ends_with_408(checkpoint):
    core = EngineCore(Engine.open(checkpoint), max_concurrency=8, max_n=4, timeout=0.2)
    slow = generate(max_chars=100_000, timeout=0.2)
    core.receive(slow)
    started = time.monotonic()
    run = Run().drive(core)
    assert run.ended(slow.job).error == (408, "request exceeded the server's --request-timeout of 0.2 s")
    assert 0.2 <= time.monotonic() - started and 0 < len(run.text(slow.job)) < 100_000


def test_shutdown_ends_queued_and_running_requests_with_503(core):
    running = generate(max_chars=10_000)
    core.receive(running)
    Run().drive(core, until=lambda: core._batch.rows)
    queued = generate(max_chars=10)
    core.receive(queued)
    core.receive(Shutdown())
    assert core.stopping
    core.fail_all(SHUTTING_DOWN)
    ended = dict(core.take().events)
    assert ended[running.job].error == ended[queued.job].error == SHUTTING_DOWN and ended[queued.job].end
    assert not core.busy


def test_scoring_takes_turns_with_generation_and_equals_a_lone_score(core, monkeypatch, solo):
    """A text is scored a window at a time between the batch's steps: a generation sent
    while a long score runs finishes first, with its solo text."""
    monkeypatch.setattr(loop, "SCORE_WINDOW", 4)
    real = Scorer.advance

    def slow(self, window):  # each window takes 20 ms, as a long one would
        time.sleep(0.02)
        real(self, window)

    monkeypatch.setattr(Scorer, "advance", slow)
    ids = core.engine.vocab.encode("To be, or not to be, that is the question. " * 3)
    score = ScoreText(job=next(_jobs), ids=ids, top=2, unknown=0, timeout=600)
    core.receive(score)
    run = Run()
    run.drive(core, until=lambda: run.rounds >= 2)
    gen = generate("a", max_chars=30, seed=3)
    core.receive(gen)
    run.drive(core, until=lambda: run.ended(gen.job))
    assert run.ended(score.job) is None  # still scoring: it had at most its share
    assert run.text(gen.job) == solo("a", max_chars=30, seed=3).text
    run.drive(core)
    assert run.ended(score.job).error is None
    result = next(o.score for o in run.events[score.job] if o.score is not None)
    alone = score_ids(core.engine.model, ids, top=2)
    assert result.tokens == alone.tokens and np.allclose(result.logprobs, alone.logprobs)
    assert np.array_equal(result.top_ids, alone.top_ids)


def test_a_round_is_urgent_when_a_request_starts_speaks_first_or_ends(core):
    """What cannot wait for the next rounds' news (`charnet.server.core.process`): a start,
    the first characters, the end; the characters between can."""
    request = generate(max_chars=40, seed=1)
    core.receive(request)
    rounds = []
    while core.busy:
        core.iterate()
        urgent, step = core.urgent, core.take()
        events = [o for _, o in step.events] if step else []
        rounds.append((urgent, bool(step and step.started), any(o.text for o in events), any(o.end for o in events)))
    first_text = next(i for i, r in enumerate(rounds) if r[2])
    assert rounds[0][:2] == (True, True) and rounds[first_text][0] and rounds[-1][0] and rounds[-1][3]
    between = rounds[first_text + 1:-1]
    assert between and not any(urgent for urgent, *_ in between)


def test_output_waits_as_long_as_the_most_eager_response_allows(core):
    """A round's characters may gather for the shortest pace of the requests in the batch
    (a stream's interval), within `loop.WINDOW_S`: for requests read only at their end,
    the longest; once they are gone, back to the shortest."""
    least, most = loop.WINDOW_S
    assert core.window == least
    whole = generate(max_chars=10_000, pace=float("inf"))
    core.receive(whole)
    core.iterate()
    assert core.window == most
    streamed = generate(max_chars=10_000, pace=0.02)
    core.receive(streamed)
    core.iterate()
    assert core.window == 0.02
    eager = generate(max_chars=10_000, pace=0.0)
    core.receive(eager)
    core.iterate()
    assert core.window == least
    for job in (eager, streamed):
        core.receive(Cancel(job=job.job))
    core.iterate()
    assert core.window == most


def test_every_step_says_the_counts_as_they_are(core):
    """Stats are built again only when what they count can have moved; each Step's
    must still be the loop's state at that round."""
    cache = core.engine.cache
    short, long = generate("JULIET:\n", max_chars=3), generate("ROMEO:\n", max_chars=12)
    core.receive(short)
    core.receive(long)
    seen = []
    while core.busy:
        core.iterate()
        step = core.take()
        rows = core._batch.rows
        if step is not None:
            stats = step.stats
            seen.append(stats.rows)
            assert (stats.rows, stats.cache_hits, stats.cache_misses, stats.primed, stats.cache_entries) == \
                (rows, cache.hits, cache.misses, cache.primed_tokens, len(cache))
    assert 2 in seen and 1 in seen and seen[-1] == 0 and cache.primed_tokens >= len("JULIET:\n")
