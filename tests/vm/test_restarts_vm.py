"""gobgpd restarts without the ToR noticing (issue 18), at the lab's size, in the VM: the reference rack with
host1 also advertising a few dozen host routes of real ipvlan containers; each restart of lab/ipvlan_bgp_lab/restarts.py
must leave every live route in the FRR ToR's FIB throughout (no withdrawal) and end with exactly the live ones.
The 1,000 / 10,000-path figures come from bench/restarts.py (docs/restarts.md)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.embedded import NETNS_DIR, EmbeddedLab
from ipvlan_bgp_lab.fibwatch import FibWatch
from ipvlan_bgp_lab.restarts import HOST, Action, add_bulk, measure, restart_topology, scenarios, until
from ipvlan_bgp_lab.status import containers
from ipvlan_bgp_lab.topology import load_topology

pytestmark = pytest.mark.vm
UNIT = Path(__file__).resolve().parents[2] / "config" / "gobgpd.service.d" / "ipvlan-bgp.conf"
BULK = 40


class Rack:
    def __init__(self, lab: EmbeddedLab, live: set[str], bulk: set[str]) -> None:
        self.lab, self.live, self.bulk = lab, live, bulk
        self.plans: dict[str, tuple[Action, str]] = scenarios(lab, UNIT, bulk, pause=5.0)


@pytest.fixture(scope="module")
def rack() -> Iterator[Rack]:
    workdir = Path(tempfile.mkdtemp(prefix="restarts-", dir=os.environ.get("IBGP_GUEST_TMP")))
    shutil.copy2("/usr/bin/gobgpd", workdir / "gobgpd")
    lab = EmbeddedLab(load_topology(restart_topology(workdir)), gobgpd=str(workdir / "gobgpd"))
    lab.down()
    lab.up(progress=lambda line: None)
    try:
        # IPv4: the routes via host1's IPv4 session (the rack is dual-stack; its /128s ride the IPv6 one)
        rack_routes = {f"{c.address}/32" for c in containers(lab) if c.host == HOST and ":" not in c.address} \
            | {"10.1.100.0/24"}
        bulk = add_bulk(lab, BULK)
        yield Rack(lab, rack_routes | bulk, bulk)
    finally:
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def tor_fib(rack: Rack) -> AsyncIterator[FibWatch]:
    watch = await FibWatch(NETNS_DIR / rack.lab.state.node_ns("tor")).start()
    try:
        await until(lambda: _all_in(rack.live, watch), 0.0, 300, "host1's routes in the ToR's FIB")
        yield watch
    finally:
        await watch.stop()


async def _all_in(prefixes: set[str], fib: FibWatch) -> bool:
    return prefixes <= set(fib.routes)


@pytest.mark.parametrize("name", ["a_sigkill", "b_unit_restart", "c_upgrade", "agent_down",
                                  "boot_gobgpd_first", "boot_agent_first"])
async def test_restart_without_a_withdrawal_at_the_tor(rack: Rack, tor_fib: FibWatch, name: str) -> None:
    action, gone = rack.plans[name]
    rack.live.discard(gone)
    result = await measure(rack.lab, tor_fib, action, rack.live, frozenset({gone} - {""}), timeout=300, settle=3)
    print(f"{name}: {result}")
    assert result["tor_withdrawals"] == 0, result
    assert result["live_missing_from_tor_fib"] == 0, result
    assert result["gone_still_in_tor_fib"] == [], result  # the ToR ends with exactly the live routes
