"""The fabric's routing on this kernel (no ipvlan needed): containerlab/fabric.clab.yml brought up by the
embedded lab without its ipvlan containers, so the spine, the leaves, each host's gobgpd and agent run with the
shipped configs. An anycast /32 put into the gobgpd of three hosts (as their agents would) must reach the
spine and leaf1 as ECMP; GRACEFUL_SHUTDOWN on one host's path must take that host out of leaf1's next hops, on
both of leaf1's hosts also take leaf1 out of the spine's (and leaf1 sends it up to the spine), and its removal
must bring them back."""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.embedded import EmbeddedLab
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
