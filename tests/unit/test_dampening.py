from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import DampeningConfig
from agent.dampening import Damped, FlapDamper
from agent.endpoints import Endpoint, IpvlanMode
from agent.routes import group_by_namespace

CFG = DampeningConfig(max_flaps=4, window=10.0, hold_down=20.0)


def ep(ready: bool, netns: str = "/run/netns/c", ifindex: int = 2) -> Endpoint:
    return Endpoint(netns, "eth0", ifindex, IpvlanMode.L3, "eth0", (ipaddress.ip_interface("10.1.1.2/24"),), ready)


def run(damper: FlapDamper, endpoints: Iterable[Endpoint], now: float) -> Damped:
    return damper.filter(group_by_namespace(endpoints), now)


def test_normal_start_is_not_delayed() -> None:
    damper = FlapDamper(CFG)
    assert run(damper, [ep(False)], 0.0).endpoints == (ep(False),)
    assert run(damper, [ep(True)], 0.1).endpoints == (ep(True),)


def test_flapping_endpoint_is_held_until_stable() -> None:
    damper = FlapDamper(CFG)
    t = 0.0
    for i in range(6):
        result = run(damper, [ep(i % 2 == 0)], t)
        t += 1.0
    assert result.held and not result.endpoints
    last_change = t - 1.0
    assert result.next_release == last_change + CFG.hold_down
    assert run(damper, [ep(False)], last_change + 19.0).held
    released = run(damper, [ep(False)], last_change + 20.0)
    assert released.endpoints == (ep(False),) and not released.held


def test_disappearing_and_returning_counts_as_flaps() -> None:
    damper = FlapDamper(CFG)
    for i in range(6):
        result = run(damper, [ep(True)] if i % 2 else [], float(i))
    assert result.held


def test_disabled_never_holds() -> None:
    damper = FlapDamper(DampeningConfig(enabled=False, max_flaps=1))
    for i in range(10):
        result = run(damper, [ep(i % 2 == 0)], float(i))
    assert result.endpoints and not result.held


def test_an_unchanged_namespace_is_handed_on_as_the_same_object() -> None:
    damper = FlapDamper(CFG)
    quiet = (ep(True, "/run/netns/quiet"),)
    for i in range(6):
        result = damper.filter({"/run/netns/quiet": quiet, "/run/netns/c": (ep(i % 2 == 0),)}, float(i))
    assert result.held and result.by_namespace["/run/netns/quiet"] is quiet


# --- the incremental damper against the whole-table one it replaced --------------------------------------------

@dataclass
class _History:
    signature: bool | None
    changes: list[float] = field(default_factory=list)
    last_change: float = 0.0
    held: bool = False


class WholeTableDamper:
    """The previous FlapDamper, which looked at every endpoint on every pass: the reference."""

    def __init__(self, config: DampeningConfig) -> None:
        self.config = config
        self._history: dict[tuple[str, int], _History] = {}

    def filter(self, endpoints: Iterable[Endpoint], now: float) -> tuple[set[Endpoint], set[Endpoint], float | None]:
        current = {e.key: e for e in endpoints}
        cfg = self.config
        for key in set(self._history) | set(current):
            endpoint = current.get(key)
            signature = endpoint.ready if endpoint else None
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
                history.changes.clear()
            if signature is None and not history.changes and not history.held:
                del self._history[key]
        if not cfg.enabled:
            return set(current.values()), set(), None
        allowed, held, releases = set(), set(), []
        for key, endpoint in current.items():
            history = self._history[key]
            if history.held:
                held.add(endpoint)
                releases.append(history.last_change + cfg.hold_down)
            else:
                allowed.add(endpoint)
        return allowed, held, min(releases) if releases else None


# each step: time advance, then (namespace, ifindex, state) changes; state None removes the endpoint
steps = st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 3.0, 11.0, 25.0]),
                           st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(2, 4),
                                              st.sampled_from([None, False, True])), max_size=4)),
                 max_size=40)


@settings(max_examples=300, deadline=None)
@given(steps=steps, max_flaps=st.integers(1, 4))
def test_incremental_damper_agrees_with_the_whole_table_one(steps: list[tuple[float, list[Any]]],
                                                            max_flaps: int) -> None:
    config = DampeningConfig(max_flaps=max_flaps, window=10.0, hold_down=20.0)
    damper, reference = FlapDamper(config), WholeTableDamper(config)
    present: dict[tuple[str, int], Endpoint] = {}
    now = 0.0
    for advance, changes in steps:
        now += advance
        for netns, ifindex, state in changes:
            if state is None:
                present.pop((netns, ifindex), None)
            else:
                present[(netns, ifindex)] = ep(state, netns, ifindex)
        result = run(damper, sorted(present.values(), key=lambda e: e.key), now)
        allowed, held, next_release = reference.filter(present.values(), now)
        assert set(result.endpoints) == allowed
        assert set(result.held) == held
        assert result.next_release == next_release
