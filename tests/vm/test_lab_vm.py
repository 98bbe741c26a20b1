"""End to end on the embedded lab (the containerlab rack on namespaces), inside the VM: FRR ToR, two hosts
with gobgpd + agent, ipvlan L3/L3S containers, and a client pinging them through BGP-learned routes."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from ipvlan_bgp_lab.containers import add_container, netlink_in
from ipvlan_bgp_lab.demo import DEFAULT_TOPOLOGY, wait_for_routes
from ipvlan_bgp_lab.embedded import NETNS_DIR, EmbeddedLab, in_netns, state_dir
from ipvlan_bgp_lab.fibwatch import FibWatch
from ipvlan_bgp_lab.status import Container, containers, host_paths, host_prefix, neighbor_of, ping
from ipvlan_bgp_lab.topology import load_topology

pytestmark = pytest.mark.vm

HOST_OF = {"192.0.2.1": "host1", "192.0.2.5": "host2"}
NETWORKS = {"10.1.100.0/24": "host1", "10.2.100.0/24": "host2", "2001:db8:100::/64": "host1",
            "2001:db8:200::/64": "host2"}


@pytest.fixture(scope="module")
def lab() -> Iterator[EmbeddedLab]:
    lab = EmbeddedLab(load_topology(DEFAULT_TOPOLOGY))
    lab.down()  # a previous run that died half-way
    lab.up(progress=lambda line: None)
    try:
        wanted = {host_prefix(c.address) for c in containers(lab)} | set(NETWORKS)
        took = wait_for_routes(lab, "tor", wanted, timeout=240)
        print(f"lab converged {took:.1f} s after the agents started")
        yield lab
    finally:
        lab.down()
        assert not [ns for ns in NETNS_DIR.iterdir() if ns.name.startswith(lab.state.prefix)]


@pytest.fixture
async def tor_fib(lab: EmbeddedLab) -> AsyncIterator[FibWatch]:
    watch = await FibWatch(NETNS_DIR / lab.state.node_ns("tor")).start()
    try:
        yield watch
    finally:
        await watch.stop()


def by_host(lab: EmbeddedLab) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for c in containers(lab):
        result.setdefault(c.host, set()).add(host_prefix(c.address))
    return result


async def test_every_container_routed_to_its_host_and_reachable(lab: EmbeddedLab, tor_fib: FibWatch) -> None:
    found = containers(lab)
    assert {c.address for c in found} == {"10.1.100.11", "10.1.100.12", "10.3.0.11", "10.2.100.21", "10.3.0.21",
                                          "2001:db8:100::11", "2001:db8:100::12", "2001:db8:300::11",
                                          "2001:db8:200::21", "2001:db8:300::21"}
    names = neighbor_of(lab, "tor")
    for c in found:  # includes 10.3.0.0/24 and 2001:db8:300::/64, split across both hosts: each to the right one
        assert [names[g] for g in tor_fib.routes[host_prefix(c.address)]] == [c.host], c
    for network, host in NETWORKS.items():
        assert [names[g] for g in tor_fib.routes[network]] == [host]
    assert "10.3.0.0/24" not in tor_fib.routes  # host routes only for the shared network
    assert "2001:db8:300::/64" not in tor_fib.routes
    for host, prefixes in by_host(lab).items():
        advertised = set(host_paths(lab, host))
        assert prefixes <= advertised and not (advertised - prefixes - set(NETWORKS))
    for c in found:  # ping and ping6
        assert ping(lab, "client", c.address).ok, f"client cannot reach {c.address}"


async def add_lab_container(lab: EmbeddedLab, host: str, name: str, address: str, mode: str) -> None:
    ns = lab.state.node_ns(host)
    for line in (f"ip netns add {name}", f"ip link add {name} link eth1 type ipvlan mode {mode}",
                 f"ip link set {name} netns {name}", f"ip -n {name} addr add {address}/24 dev {name}",
                 f"ip -n {name} link set {name} up", f"ip -n {name} route add default dev {name}"):
        in_netns(ns, line)
    lab.state.containers.append(name)


def remove_lab_container(lab: EmbeddedLab, name: str) -> None:
    in_netns(lab.state.node_ns("tor"), f"ip netns del {name}", check=False)
    if name in lab.state.containers:
        lab.state.containers.remove(name)


async def test_container_added_then_removed(lab: EmbeddedLab, tor_fib: FibWatch) -> None:
    try:
        started = time.monotonic()
        await add_lab_container(lab, "host2", "e2eadd", "10.2.100.77", "l3s")  # host2's parent is in L3S mode
        await tor_fib.wait_for("10.2.100.77/32")
        print(f"container created -> /32 in the ToR FIB: {time.monotonic() - started:.2f} s")
        assert ping(lab, "client", "10.2.100.77").ok
    finally:
        remove_lab_container(lab, "e2eadd")
    await tor_fib.wait_for("10.2.100.77/32", present=False)


async def test_creation_to_tor_fib_latency_over_50_containers(lab: EmbeddedLab, tor_fib: FibWatch) -> None:
    """Container creation (namespace + ipvlan + address + up, as Docker does it) -> /32 in the ToR FIB."""
    host = await netlink_in(NETNS_DIR / lab.state.node_ns("host1"))
    samples = []
    names = []
    try:
        for i in range(50):
            name = f"lat{i}"
            names.append(name)
            lab.state.containers.append(name)
            address = f"10.1.100.{100 + i}"
            started = time.monotonic()
            await add_container(host, "eth1", NETNS_DIR / name, [f"{address}/24"])
            arrived = await tor_fib.wait_for(f"{address}/32")
            samples.append(arrived - started)
    finally:
        host.close()
        for name in names:
            remove_lab_container(lab, name)
    samples.sort()
    print(f"container creation -> ToR FIB over {len(samples)} containers: median {statistics.median(samples):.3f} s,"
          f" worst {samples[-1]:.3f} s")
    for i in range(50):
        await tor_fib.wait_for(f"10.1.100.{100 + i}/32", present=False)


async def test_gobgpd_restart_on_one_host_leaves_the_other_alone(lab: EmbeddedLab, tor_fib: FibWatch) -> None:
    hosts = by_host(lab)
    host1_live = hosts["host1"] | {"10.1.100.0/24", "2001:db8:100::/64"}
    host2_live = hosts["host2"] | {"10.2.100.0/24", "2001:db8:200::/64"}
    sessions_before = _neighbor(lab, "192.0.2.1")["connectionsEstablished"]
    mark = time.monotonic()
    lab.restart("host1/gobgpd")
    # The whole restart, not just its start: a new session from host1, its agent's paths back in the new
    # gobgpd, and graceful restart over at the ToR (no stale host1 path left), so a late End-of-RIB flush
    # would have been seen below.
    await _new_session(lab, "192.0.2.1", sessions_before)
    await _graceful_restart_over(lab, host1_live)
    print(f"host1 gobgpd SIGKILL + restart: graceful restart over after {time.monotonic() - mark:.1f} s")
    for prefix in host1_live | host2_live:
        await tor_fib.wait_for(prefix)
    assert tor_fib.withdrawals(host2_live, since=mark) == []
    black_holed = tor_fib.withdrawals(host1_live, since=mark)
    assert black_holed == [], f"graceful restart should keep host1's routes in the ToR FIB: {black_holed}"


def _neighbor(lab: EmbeddedLab, address: str) -> dict[str, Any]:
    data = json.loads(lab.routers["tor"].vtysh(f"show bgp neighbors {address} json") or "{}")
    neighbor: dict[str, Any] = data.get(address, {})
    assert "connectionsEstablished" in neighbor, f"unexpected FRR output: {data}"
    return neighbor


async def _new_session(lab: EmbeddedLab, address: str, established_before: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        neighbor = _neighbor(lab, address)
        if neighbor["connectionsEstablished"] > established_before and neighbor.get("bgpState") == "Established":
            return
        assert time.monotonic() < deadline, f"no new BGP session with {address}: {neighbor}"
        await asyncio.sleep(0.2)


async def _graceful_restart_over(lab: EmbeddedLab, prefixes: set[str], timeout: float = 180.0) -> None:
    """Every prefix in the ToR's BGP table with a path, and no path of it marked stale."""
    deadline = time.monotonic() + timeout
    while True:
        table = lab.routers["tor"].bgp_table()
        pending = {p for p in prefixes if not table.get(p) or any(path.get("stale") for path in table[p])}
        if not pending:
            return
        assert time.monotonic() < deadline, f"graceful restart not over: {sorted(pending)}"
        await asyncio.sleep(0.2)


async def _fresh_session(lab: EmbeddedLab, neighbor: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            summary = json.loads(lab.routers["tor"].vtysh("show bgp summary json") or "{}")
        except RuntimeError:  # bgpd restarting: its vty socket is not there yet
            summary = {}
        peers = summary.get("ipv4Unicast", {}).get("peers", {})
        if peers.get(neighbor, {}).get("state") == "Established":
            return
        assert time.monotonic() < deadline, f"BGP session with {neighbor} not re-established: {peers}"
        await asyncio.sleep(0.2)


async def test_agent_sigkill_and_restart_causes_no_withdrawal(lab: EmbeddedLab, tor_fib: FibWatch) -> None:
    hosts = by_host(lab)
    live = hosts["host1"] | {"10.1.100.0/24", "2001:db8:100::/64"}
    log = state_dir(lab.topology.name) / "host1" / "agent.log"
    in_sync_before = log.read_text().count("in sync with gobgpd")
    mark = time.monotonic()
    lab.restart("host1/agent")
    deadline = time.monotonic() + 180
    while log.read_text().count("in sync with gobgpd") <= in_sync_before:  # the new agent's first full pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        await asyncio.sleep(0.2)
    print(f"agent SIGKILL -> restarted agent in sync after {time.monotonic() - mark:.1f} s")
    assert tor_fib.withdrawals(live, since=mark) == []
    assert all(p in tor_fib.routes for p in live)


async def test_tor_restart_all_routes_return(lab: EmbeddedLab, tor_fib: FibWatch) -> None:
    wanted: set[str] = set(NETWORKS)
    for prefixes in by_host(lab).values():
        wanted |= prefixes
    started = time.monotonic()
    lab.restart("tor/bgpd", signal.SIGTERM)  # zebra and bgpd both: a clean stop takes the routes out
    await _fresh_session(lab, "192.0.2.1")
    await _fresh_session(lab, "192.0.2.5")
    for prefix in sorted(wanted):
        await tor_fib.wait_for(prefix, timeout=180)
    print(f"ToR restart: all {len(wanted)} routes back in its FIB after {time.monotonic() - started:.1f} s")
    for prefix in sorted(wanted):  # they really left (the restart happened), then came back
        removed = [e.at for e in tor_fib.events if e.prefix == prefix and not e.added and e.at >= started]
        added = [e.at for e in tor_fib.events if e.prefix == prefix and e.added and e.at >= started]
        assert removed and added and max(added) > min(removed), f"{prefix} never left the ToR FIB: {removed}"
    found: list[Container] = containers(lab)
    assert all(ping(lab, "client", c.address).ok for c in found)
