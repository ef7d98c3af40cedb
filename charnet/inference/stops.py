"""Stop strings in text that arrives a piece at a time, in time linear in the text.

A request's stop strings become one Aho–Corasick automaton (built once, shared by every
sequence that uses them). Its state after the text so far is the longest suffix of the
text that is a prefix of some stop string: exactly the part that must be held back,
since it may still become a stop. Each character costs O(1) amortised, however many and
however long the stops are, so a request with 16 stops of 256 characters costs what one
with a single short stop costs (a naive matcher compares every prefix of every stop on
every character).

The first stop to end wins, and of those ending at the same character the longest (it
starts earliest); the text before it is emitted and the rest dropped.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

MAX_STOPS = 16
"""Most stop strings one request may give."""

MAX_STOP_CHARS = 256
"""Longest stop string, in characters: what a stream may hold back before emitting."""


class _Automaton:
    """Aho–Corasick over `stops`: goto and failure links, each state's depth (the length
    of its string) and the longest stop ending there (0 if none)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        goto: list[dict[str, int]] = [{}]
        depth, ends = [0], [0]
        for stop in stops:
            s = 0
            for ch in stop:
                nxt = goto[s].get(ch)
                if nxt is None:
                    nxt = goto[s][ch] = len(goto)
                    goto.append({})
                    depth.append(depth[s] + 1)
                    ends.append(0)
                s = nxt
            ends[s] = len(stop)  # the state's string is the stop itself
        fail = [0] * len(goto)
        queue = deque(goto[0].values())
        while queue:  # breadth first: a failure link points to a shallower, finished state
            s = queue.popleft()
            for ch, t in goto[s].items():
                f = fail[s]
                while f and ch not in goto[f]:
                    f = fail[f]
                fail[t] = goto[f].get(ch, 0)
                ends[t] = ends[t] or ends[fail[t]]  # else the longest stop that is a suffix
                queue.append(t)
        self.goto, self.fail, self.depth, self.ends = goto, fail, depth, ends

    def next(self, s: int, ch: str) -> int:
        goto, fail = self.goto, self.fail
        while s and ch not in goto[s]:
            s = fail[s]
        return goto[s].get(ch, 0)


@lru_cache(maxsize=32)
def _automaton(stops: tuple[str, ...]) -> _Automaton:
    return _Automaton(stops)


class StopMatcher:
    """Feeds text through a request's stop strings, emitting only what can no longer be
    part of one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._auto = _automaton(stops) if stops else None
        self._state = 0
        self._held: deque[str] = deque()  # the automaton state's string, not yet emitted

    @property
    def tail(self) -> str:
        """Text held back because it may still become a stop string."""
        return "".join(self._held)

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was found)."""
        auto = self._auto
        if auto is None:
            return text, False
        out: list[str] = []
        held, s = self._held, self._state
        for ch in text:
            s = auto.next(s, ch)
            held.append(ch)
            stop = auto.ends[s]
            if stop:
                for _ in range(len(held) - stop):
                    out.append(held.popleft())
                held.clear()
                self._state = 0
                return "".join(out), True
            for _ in range(len(held) - auto.depth[s]):  # what the state no longer covers
                out.append(held.popleft())
        self._state = s
        return "".join(out), False

    def flush(self) -> str:
        """Everything held back (the sequence ended without a stop)."""
        text = self.tail
        self._held.clear()
        self._state = 0
        return text

