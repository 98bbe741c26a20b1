"""Flap dampening (pure; the clock is passed in).

An endpoint whose readiness (absent / not ready / ready) changes more than ``max_flaps`` times within
``window`` seconds is held down - treated as absent - until it has been stable for ``hold_down``
seconds. A normal container start is one or two changes, so it is never delayed; address changes on a
ready endpoint are not flaps.

A filter costs what changed: only namespaces whose endpoint tuple is a new object are compared (discovery
hands out the same tuple while a namespace is unchanged), and held endpoints are released from a heap
ordered by release time.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import DampeningConfig
from .endpoints import Endpoint, flatten

Key = tuple[str, int]  # Endpoint.key: (namespace, ifindex)
Signature = bool | None  # ready or not; None: the endpoint is absent


@dataclass(slots=True)
class _History:
    signature: Signature
    changes: list[float] = field(default_factory=list)  # times of changes within the window
    last_change: float = 0.0
    held: bool = False


@dataclass(frozen=True)
class Damped:
    by_namespace: Mapping[str, tuple[Endpoint, ...]]  # the ones that may be advertised
    held: tuple[Endpoint, ...]  # present but held down
    next_release: float | None  # when a held endpoint may come back (monotonic time), if any

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return flatten(self.by_namespace)


class FlapDamper:
    def __init__(self, config: DampeningConfig) -> None:
        self.config = config
        self._history: dict[Key, _History] = {}
        self._seen: dict[str, tuple[Endpoint, ...]] = {}  # the last endpoints of each namespace
        self._held: dict[str, set[int]] = {}  # namespace -> ifindexes held down (no empty sets)
        self._releases: list[tuple[float, Key]] = []  # (release time, key), stale entries skipped
        self._expiries: list[tuple[float, Key]] = []  # (when an absent endpoint's history may go, key)
        self._timed_with: DampeningConfig = config

    def filter(self, by_namespace: Mapping[str, tuple[Endpoint, ...]], now: float) -> Damped:
        if self.config is not self._timed_with:  # reloaded: the heaps were timed with the old window/hold_down
            self._retime()
        for netns in [n for n in self._seen if n not in by_namespace]:
            for endpoint in self._seen.pop(netns):
                self._change((netns, endpoint.ifindex), endpoint.ready, None, now)
        for netns, endpoints in by_namespace.items():
            before = self._seen.get(netns)
            if before is endpoints:
                continue
            self._seen[netns] = endpoints
            signatures: dict[int, Signature] = {e.ifindex: e.ready for e in before} if before else {}
            for endpoint in endpoints:
                was = signatures.pop(endpoint.ifindex, None)
                if was != endpoint.ready:
                    self._change(endpoint.key, was, endpoint.ready, now)
            for ifindex, was in signatures.items():
                self._change((netns, ifindex), was, None, now)
        self._release_due(now)
        self._expire(now)
        if not self.config.enabled or not self._held:
            return Damped(by_namespace, (), None)
        allowed = dict(by_namespace)
        held: list[Endpoint] = []
        for netns, ifindexes in self._held.items():
            endpoints = by_namespace.get(netns, ())
            allowed[netns] = tuple(e for e in endpoints if e.ifindex not in ifindexes)
            held.extend(e for e in endpoints if e.ifindex in ifindexes)
        hold_down = self.config.hold_down
        next_release = min((self._history[e.key].last_change + hold_down for e in held), default=None)
        return Damped(allowed, tuple(held), next_release)

    def _change(self, key: Key, was: Signature, signature: Signature, now: float) -> None:
        """Only endpoints that changed within the window (or are held) have a history: a stable one's
        signature is in ``_seen``, and 10,000 stable endpoints cost nothing here."""
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = _History(was)
        if history.signature == signature:
            return
        cfg = self.config
        history.signature = signature
        history.changes = [t for t in history.changes if now - t < cfg.window]
        history.changes.append(now)
        history.last_change = now
        if not history.held and len(history.changes) > cfg.max_flaps:
            history.held = True
            self._held.setdefault(key[0], set()).add(key[1])
        if history.held:
            heapq.heappush(self._releases, (now + cfg.hold_down, key))
        else:
            heapq.heappush(self._expiries, (now + cfg.window, key))

    def _release_due(self, now: float) -> None:
        while self._releases and self._releases[0][0] <= now:
            _, key = heapq.heappop(self._releases)
            history = self._history.get(key)
            if history is None or not history.held:
                continue
            if now - history.last_change < self.config.hold_down:
                continue  # changed again since: a later entry stands for it
            ifindexes = self._held[key[0]]  # stable long enough: released, and counting starts afresh
            ifindexes.discard(key[1])
            if not ifindexes:
                del self._held[key[0]]
            del self._history[key]

    def _expire(self, now: float) -> None:
        """Forget histories whose last change left the window (a history with no change in the window behaves
        as none)."""
        while self._expiries and self._expiries[0][0] <= now:
            _, key = heapq.heappop(self._expiries)
            history = self._history.get(key)
            if history is not None and not history.held and now - history.last_change >= self.config.window:
                del self._history[key]

    def _retime(self) -> None:
        cfg = self._timed_with = self.config
        self._releases = [(h.last_change + cfg.hold_down, key) for key, h in self._history.items() if h.held]
        self._expiries = [(h.last_change + cfg.window, key) for key, h in self._history.items() if not h.held]
        heapq.heapify(self._releases)
        heapq.heapify(self._expiries)
