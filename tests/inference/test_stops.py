"""Stop strings: the right text cut at the right place, for work linear in the text."""

from __future__ import annotations

import random

import pytest

from charnet.errors import ConfigError
from charnet.inference.request import GenerationRequest
from charnet.inference.stops import MAX_STOP_CHARS, MAX_STOPS, StopMatcher, _automaton


def oracle(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The first stop to end wins, the longest of those ending together: the text before it."""
    for end in range(1, len(text) + 1):
        hits = [s for s in stops if text[:end].endswith(s)]
        if hits:
            return text[: end - len(max(hits, key=len))], True
    return text, False


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_agrees_with_the_definition_on_random_text():
    rng = random.Random(0)
    for _ in range(3000):
        stops = tuple({"".join(rng.choice("ab") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 5))})
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert feed_all(StopMatcher(stops), pieces) == oracle(text, stops), (stops, text)


def test_holds_back_only_what_may_still_become_a_stop():
    m = StopMatcher(("abcd", "xyz"))
    for ch in "qqabc":
        m.feed(ch)
    assert m.tail == "abc"
    assert m.feed("x") == ("abc", False) and m.tail == "x"  # "abcx" no longer starts a stop; "x" may
    assert m.feed("yz!") == ("", True)


def test_work_per_character_is_bounded_however_long_the_stops():
    """The automaton follows at most one failure link per character fed, on average:
    16 stops of 256 characters cost what a short one costs (a naive matcher compares
    every prefix of every stop on every character)."""
    stops = tuple("ab" * 127 + "a" + chr(ord("c") + i) for i in range(MAX_STOPS))
    auto = _automaton(stops)
    transitions = 0
    real_next = auto.next

    def counting(s, ch):
        nonlocal transitions
        f = s
        while f and ch not in auto.goto[f]:
            transitions += 1
            f = auto.fail[f]
        return real_next(s, ch)

    auto.next = counting
    try:
        text = "ab" * 5000 + "x" + "ab" * 5000
        text, stopped = StopMatcher(stops).feed(text)
    finally:
        del auto.next
    assert not stopped and transitions <= 20_002  # one failure link at most per character, amortised
    assert len(stops[0]) == MAX_STOP_CHARS


@pytest.mark.parametrize("stop, fragment", [(("x" * (MAX_STOP_CHARS + 1),), "at most 256 characters"),
                                            (("a",) * (MAX_STOPS + 1), "at most 16"),
                                            (("ok\ud800",), "not valid Unicode")])
def test_requests_bound_their_stops(stop, fragment):
    with pytest.raises(ConfigError, match=fragment) as e:
        GenerationRequest(prompt="x", stop=stop)
    assert e.value.field == "stop"
