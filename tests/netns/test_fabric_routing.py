"""The fabric's routing on this kernel (no ipvlan needed): containerlab/fabric.clab.yml brought up by the
embedded lab without its ipvlan containers, so the spine, the leaves, each host's gobgpd and agent run with the
shipped configs. An anycast /32 put into the gobgpd of three hosts (as their agents would) must reach the
spine and leaf1 as ECMP; GRACEFUL_SHUTDOWN on one host's path must take that host out of leaf1's next hops, on
both of leaf1's hosts also take leaf1 out of the spine's (and leaf1 sends it up to the spine), and its removal
must bring them back. With the anycast address on those hosts' loopback, UDP flows from the client over many
source ports must spread over all three (the ECMP hash settings of the topology file)."""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.embedded import NETNS_DIR, EmbeddedLab, in_netns
from ipvlan_bgp_lab.flows import FlowStream
from ipvlan_bgp_lab.status import fib
from ipvlan_bgp_lab.topology import load_topology, without_containers

from agent.drain import GRACEFUL_SHUTDOWN
from agent.gobgp import GobgpClient
from agent.model import Attributes, LargeCommunity, Route

from ..helpers import eventually

REPO = Path(__file__).resolve().parents[2]
ANYCAST = ipaddress.ip_network("10.99.0.10/32")
# Not any agent's ownership community: the agents leave these paths alone, as an operator's.
TEST_OWNER = LargeCommunity(65535, 4242, 99)
HOP = {"spine": "192.0.2.1", "leaf1": "192.0.2.2", "leaf2": "192.0.2.6",
       "host1": "192.0.2.10", "host2": "192.0.2.14", "host3": "192.0.2.18"}

pytestmark = pytest.mark.skipif(not Path("/usr/lib/frr/bgpd").exists(), reason="FRR is not installed")


@pytest.fixture
def lab() -> Iterator[EmbeddedLab]:
    topology = without_containers(load_topology(REPO / "containerlab" / "fabric.clab.yml"),
                                  f"fabric-{uuid.uuid4().hex[:6]}")
    lab = EmbeddedLab(topology)
    lab.up(progress=lambda _: None)
    try:
        yield lab
    finally:
        lab.down()
        for host in ("host1", "host2", "host3", "host4"):
            Path(f"/run/ipvlan-bgp/fabric-{host}.drained").unlink(missing_ok=True)


@pytest.fixture
async def gobgpds(lab: EmbeddedLab) -> AsyncIterator[dict[str, GobgpClient]]:
    clients = {host: GobgpClient(lab.gobgp_api(host), TEST_OWNER) for host in ("host1", "host2", "host3")}
    try:
        for client in clients.values():
            await client.connect(timeout=60)
        yield clients
    finally:
        for client in clients.values():
            await client.close()


def hops(lab: EmbeddedLab, router: str) -> set[str]:
    return set(fib(lab, router).get(str(ANYCAST), []))


def route(drained: bool) -> Route:
    return Route(ANYCAST, None, Attributes(communities=(GRACEFUL_SHUTDOWN,) if drained else (),
                                           large_communities=(TEST_OWNER,)))


async def test_anycast_ecmp_through_the_fabric_and_graceful_shutdown(lab: EmbeddedLab,
                                                                    gobgpds: dict[str, GobgpClient]) -> None:
    for client in gobgpds.values():
        await client.add_paths([route(False)])
    started = time.monotonic()
    await eventually(lambda: hops(lab, "spine") == {HOP["leaf1"], HOP["leaf2"]}, timeout=120,
                     what="the spine's ECMP to leaf1 and leaf2 (the agents enable their leaf sessions first)")
    await eventually(lambda: hops(lab, "leaf1") == {HOP["host1"], HOP["host2"]}, what="leaf1's ECMP")
    print(f"anycast /32 in the spine's FIB with 2 next hops {time.monotonic() - started:.1f} s after the adds")

    marked = time.monotonic()
    await gobgpds["host1"].add_paths([route(True)])  # what `ipvlan-bgp drain` on host1 sends
    await eventually(lambda: hops(lab, "leaf1") == {HOP["host2"]}, what="host1 out of leaf1's next hops")
    print(f"GRACEFUL_SHUTDOWN from host1 -> leaf1's FIB without host1: {time.monotonic() - marked:.2f} s")
    assert hops(lab, "spine") == {HOP["leaf1"], HOP["leaf2"]}  # leaf1 still has a full-preference path

    await gobgpds["host2"].add_paths([route(True)])  # both of leaf1's hosts drained: the community travels up
    await eventually(lambda: hops(lab, "spine") == {HOP["leaf2"]}, what="leaf1 out of the spine's next hops")
    # leaf1 itself then prefers the spine's path (via leaf2 to host3, full preference) to its own hosts' at
    # local-preference 0: traffic entering leaf1 avoids the drained hosts as well
    await eventually(lambda: hops(lab, "leaf1") == {HOP["spine"]}, what="leaf1 sending it up to the spine")

    for host in ("host1", "host2"):
        await gobgpds[host].add_paths([route(False)])  # undrain
    await eventually(lambda: hops(lab, "spine") == {HOP["leaf1"], HOP["leaf2"]}, what="the spine's ECMP again")
    await eventually(lambda: hops(lab, "leaf1") == {HOP["host1"], HOP["host2"]}, what="leaf1's ECMP again")


async def test_flows_from_the_client_spread_over_the_anycast_hosts(lab: EmbeddedLab,
                                                                  gobgpds: dict[str, GobgpClient]) -> None:
    """The spine hashes on ports, the leaves on other fields than the spine: with one kernel's hash key for all
    of them, the same fields would send every flow the spine gives leaf1 to one of its hosts."""
    address = str(ANYCAST.network_address)
    for host, client in gobgpds.items():
        in_netns(lab.state.node_ns(host), f"ip addr add {address}/32 dev lo")
        await client.add_paths([route(False)])
    await eventually(lambda: hops(lab, "spine") == {HOP["leaf1"], HOP["leaf2"]}, timeout=120, what="the spine's ECMP")
    await eventually(lambda: hops(lab, "leaf1") == {HOP["host1"], HOP["host2"]}, what="leaf1's ECMP")
    flows = FlowStream(NETNS_DIR / lab.state.node_ns("client"), address, 7900,
                       {host: NETNS_DIR / lab.state.node_ns(host) for host in gobgpds}, flows=128, rate=250.0).start()
    try:
        await eventually(lambda: len(flows.sent) >= 3 * 128, what="three datagrams of each flow")
    finally:
        flows.stop()
    shares = {host: len(flows.flows_of(host)) for host in gobgpds}
    print(f"128 flows from the client: {shares}")
    assert flows.lost() == []
    for host, share in shares.items():  # expected 1/4, 1/4, 1/2
        assert share >= 128 // 10, f"{host} served {share} of 128 flows: {shares}"
