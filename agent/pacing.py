"""Fairness between namespaces (pure; the clock is passed in).

Each namespace has a bucket of turns: a change of its endpoints is handed to the next pass while it has a turn
left (it starts with ``BURST``, and gets one back every ``interval`` seconds). A namespace out of turns waits for
its next one; meanwhile passes see the endpoints it had at its last turn. A container start, or an operator's
few changes, never waits; one container churning addresses thousands of times a second is handled about once
per interval, and every other namespace's change still goes into the next pass (issue #16's noisy neighbour).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .endpoints import Endpoint

BURST = 10  # changes in a row a namespace may have handled at once


@dataclass
class _Bucket:
    endpoints: tuple[Endpoint, ...]  # as handed on at its last turn
    turns: float
    at: float  # when ``turns`` was counted


class NamespacePacer:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._buckets: dict[str, _Bucket] = {}

    def pace(self, by_namespace: Mapping[str, tuple[Endpoint, ...]], now: float
             ) -> tuple[Mapping[str, tuple[Endpoint, ...]], float | None]:
        """The endpoints a pass should see, and when a namespace held back here has its next turn (None: none
        is held back). A namespace that is gone goes at once: its routes must not outlive it."""
        for netns in [n for n in self._buckets if n not in by_namespace]:
            del self._buckets[netns]
        paced: dict[str, tuple[Endpoint, ...]] | None = None
        next_turn: float | None = None
        for netns, endpoints in by_namespace.items():
            bucket = self._buckets.get(netns)
            if bucket is None:
                self._buckets[netns] = _Bucket(endpoints, BURST - 1, now)
                continue
            if bucket.endpoints is endpoints:
                continue
            if self.interval > 0:
                bucket.turns = min(BURST, bucket.turns + (now - bucket.at) / self.interval)
                bucket.at = now
            if self.interval <= 0 or bucket.turns >= 1:
                bucket.endpoints = endpoints
                bucket.turns -= 1
                continue
            if paced is None:
                paced = dict(by_namespace)
            paced[netns] = bucket.endpoints
            due = now + (1 - bucket.turns) * self.interval
            next_turn = due if next_turn is None else min(next_turn, due)
        return (by_namespace if paced is None else paced), next_turn
