"""An engine loop's news between two messages (`News`): a choice's characters joined
into one event, everything else kept as it came, in order."""

from __future__ import annotations

from charnet.inference.generation import CharLogprob
from charnet.server.core.news import News
from charnet.server.core.protocol import Choice, Out


def test_a_choices_characters_from_many_rounds_become_one_event_in_the_order_they_began():
    news = News()
    news.start(1, [Choice(seed=0, prompt_tokens=3), Choice(seed=1, prompt_tokens=3)])
    news.text(1, seq=10, index=0, text="a", generated=1, finish_reason=None)
    news.text(2, seq=20, index=0, text="x", generated=1, finish_reason=None)
    news.text(1, seq=11, index=1, text="", generated=1, finish_reason=None)  # held back by a stop string
    news.text(1, seq=10, index=0, text="bc", generated=2, finish_reason=None)
    news.text(1, seq=11, index=1, text="q", generated=2, finish_reason="length")
    news.text(1, seq=10, index=0, text="d", generated=3, finish_reason="stop")
    news.add(1, Out(end=True))
    news.text(2, seq=20, index=0, text="y", generated=2, finish_reason=None)
    started, events = news.take()
    assert started == [(1, [Choice(seed=0, prompt_tokens=3), Choice(seed=1, prompt_tokens=3)])]
    assert events == [(1, Out(index=0, text="abcd", generated=3, finish_reason="stop")),
                      (2, Out(index=0, text="xy", generated=2)),
                      (1, Out(index=1, text="q", generated=2, finish_reason="length")),
                      (1, Out(end=True))]
    assert not news and news.take() == ([], [])


def test_an_event_with_more_than_characters_stands_alone_and_what_follows_comes_after_it():
    news = News()
    scored = Out(index=0, text="b", generated=2, logprobs=(CharLogprob(text="b", logprob=-0.5, top=[("b", -0.5)]),))
    news.text(7, seq=3, index=0, text="a", generated=1, finish_reason=None)
    news.add(7, scored, seq=3)
    news.text(7, seq=3, index=0, text="c", generated=3, finish_reason=None)
    assert news
    _, events = news.take()
    assert events == [(7, Out(index=0, text="a", generated=1)), (7, scored), (7, Out(index=0, text="c", generated=3))]


def test_taking_starts_every_choice_afresh():
    news = News()
    news.text(1, seq=1, index=0, text="a", generated=1, finish_reason=None)
    news.take()
    news.text(1, seq=1, index=0, text="b", generated=2, finish_reason=None)
    assert news.take() == ([], [(1, Out(index=0, text="b", generated=2))])
