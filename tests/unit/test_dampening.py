from __future__ import annotations

import ipaddress

from agent.config import DampeningConfig
from agent.dampening import FlapDamper
from agent.endpoints import Endpoint, IpvlanMode

CFG = DampeningConfig(max_flaps=4, window=10.0, hold_down=20.0)


def ep(ready: bool) -> Endpoint:
    return Endpoint("/run/netns/c", "eth0", 2, IpvlanMode.L3, "eth0", (ipaddress.ip_interface("10.1.1.2/24"),), ready)


def test_normal_start_is_not_delayed() -> None:
    damper = FlapDamper(CFG)
    assert damper.filter([ep(False)], 0.0).endpoints == (ep(False),)
    assert damper.filter([ep(True)], 0.1).endpoints == (ep(True),)


def test_flapping_endpoint_is_held_until_stable() -> None:
    damper = FlapDamper(CFG)
    t = 0.0
    for i in range(6):
        result = damper.filter([ep(i % 2 == 0)], t)
        t += 1.0
    assert result.held and not result.endpoints
    last_change = t - 1.0
    assert result.next_release == last_change + CFG.hold_down
    assert damper.filter([ep(False)], last_change + 19.0).held
    released = damper.filter([ep(False)], last_change + 20.0)
    assert released.endpoints == (ep(False),) and not released.held


def test_disappearing_and_returning_counts_as_flaps() -> None:
    damper = FlapDamper(CFG)
    for i in range(6):
        result = damper.filter([ep(True)] if i % 2 else [], float(i))
    assert result.held


def test_disabled_never_holds() -> None:
    damper = FlapDamper(DampeningConfig(enabled=False, max_flaps=1))
    for i in range(10):
        result = damper.filter([ep(i % 2 == 0)], float(i))
    assert result.endpoints and not result.held
