"""Sharing a model's batch rows among requests: max-min fairness (water-filling).

Each request asks for some rows (its sequences that can run, at most `--max-n`); when
all asks fit, everyone gets what they ask. When they do not, every request gets an equal
share, those asking less than the share keep only what they ask, and the rows left over
go one each to the oldest requests still short. So one request with many sequences can
never take rows that a request with one is waiting for: it gets what the others leave.
"""

from __future__ import annotations


def water_fill(demands: list[int], capacity: int) -> list[int]:
    """Rows for each demand (in arrival order), summing to at most `capacity`."""
    alloc = [0] * len(demands)
    left = capacity
    order = sorted(range(len(demands)), key=lambda i: (demands[i], -i))  # smallest asks first, newest first
    for rank, i in enumerate(order):
        share = left // (len(order) - rank)
        alloc[i] = min(demands[i], share)
        left -= alloc[i]
    for i in range(len(demands)):  # what the integer shares left over: the oldest first
        if not left:
            break
        if alloc[i] < demands[i]:
            alloc[i] += 1
            left -= 1
    return alloc
