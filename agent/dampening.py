"""Flap dampening (pure; the clock is passed in).

An endpoint whose readiness (absent / not ready / ready) changes more than ``max_flaps`` times within
``window`` seconds is held down - treated as absent - until it has been stable for ``hold_down``
seconds. A normal container start is one or two changes, so it is never delayed; address changes on a
ready endpoint are not flaps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import DampeningConfig
from .endpoints import Endpoint

Key = tuple[str, int]
Signature = bool | None  # ready or not; None: the endpoint is absent


@dataclass
class _History:
    signature: Signature
    changes: list[float] = field(default_factory=list)  # times of changes within the window
    last_change: float = 0.0
    held: bool = False


@dataclass(frozen=True)
class Damped:
    endpoints: tuple[Endpoint, ...]  # the ones that may be advertised
    held: tuple[Endpoint, ...]  # present but held down
    next_release: float | None  # when a held endpoint may come back (monotonic time), if any


class FlapDamper:
    def __init__(self, config: DampeningConfig) -> None:
        self.config = config
        self._history: dict[Key, _History] = {}

    def filter(self, endpoints: Iterable[Endpoint], now: float) -> Damped:
        current = {e.key: e for e in endpoints}
        cfg = self.config
        for key in set(self._history) | set(current):
            endpoint = current.get(key)
            signature: Signature = endpoint.ready if endpoint else None
            history = self._history.setdefault(key, _History(None))
            if history.signature != signature:
                history.signature = signature
                history.changes.append(now)
                history.last_change = now
            history.changes = [t for t in history.changes if now - t < cfg.window]
            if not history.held and len(history.changes) > cfg.max_flaps:
                history.held = True
            elif history.held and now - history.last_change >= cfg.hold_down:
                history.held = False
                history.changes.clear()  # stable long enough: start counting afresh
            if signature is None and not history.changes and not history.held:
                del self._history[key]
        if not cfg.enabled:
            return Damped(tuple(current.values()), (), None)
        allowed, held, releases = [], [], []
        for key, endpoint in current.items():
            history = self._history[key]
            if history.held:
                held.append(endpoint)
                releases.append(history.last_change + cfg.hold_down)
            else:
                allowed.append(endpoint)
        return Damped(tuple(allowed), tuple(held), min(releases) if releases else None)
