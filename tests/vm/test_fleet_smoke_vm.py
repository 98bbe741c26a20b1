"""Keep bench/fleet.py working: a 2-host fabric with 5 containers each, in both advertise modes, end to end
(lab, containers at once, the spine's FIB, a leaf restart), judged by route counts, never by a time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fleet

pytestmark = pytest.mark.vm


async def test_fleet_host_routes_smoke() -> None:
    result = await fleet.run_fleet(fleet.Fleet(2, 5, "host"), name="fleetsmoke")
    print(result)
    assert result["spine_fib_routes"] == 10 and result["spine_fib_unexpected"] == []
    assert result["spine_bgp"]["prefixes"] == result["spine_bgp"]["paths"] == 10
    assert set(result["agents"]) == {"h1", "h2"} and all(a["hwm_mib"] > 0 for a in result["agents"].values())
    assert result["leaf_restart"]["leaf1_routes"] == 5  # h1's: leaf1's share came back
    assert result["leaf_restart"]["spine_bgp"]["prefixes"] == 10


async def test_fleet_aggregate_smoke() -> None:
    result = await fleet.run_fleet(fleet.Fleet(2, 5, "aggregate"), leaf_restart=False, name="fleetsmoke")
    print(result)
    assert result["spine_fib_routes"] == 2 and result["spine_fib_unexpected"] == []
    assert result["spine_bgp"]["prefixes"] == 2
