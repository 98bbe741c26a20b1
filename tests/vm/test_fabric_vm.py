"""The fabric (containerlab/fabric.clab.yml) on the embedded lab inside the VM, with its ipvlan containers: an FRR
spine over two FRR leaves, four hosts running gobgpd + the agent with the shipped configs, a client behind the
spine. One lab for the module (bringing it up costs about a minute under TCG); the tests run in order, and the
last two change it: the anycast container of host3 is removed, then host1 is drained, withdrawn and undrained.

Traffic is UDP from the client to the anycast address 10.99.0.10 over many source ports (one flow each, as the
routers' ECMP hash sees it), counted by a socket in each anycast container (ipvlan_bgp_lab/flows.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from ipvlan_bgp_lab.demo import wait_for_routes
from ipvlan_bgp_lab.embedded import NETNS_DIR, EmbeddedLab, in_netns
from ipvlan_bgp_lab.fibwatch import FibWatch
from ipvlan_bgp_lab.flows import FlowStream
from ipvlan_bgp_lab.status import containers, host_prefix, neighbor_of
from ipvlan_bgp_lab.topology import AGENT_CONF, Topology, load_topology

from .conftest import eventually

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
ANYCAST = "10.99.0.10"
ANYCAST_32 = f"{ANYCAST}/32"
PORT = 7900
HOP = {"leaf1": "192.0.2.2", "leaf2": "192.0.2.6", "host1": "192.0.2.10", "host2": "192.0.2.14",
       "host3": "192.0.2.18", "spine-leaf2": "192.0.2.5"}
# The test's copy of the hosts' agent.toml withdraws a drained host's paths after this many seconds (the
# shipped files leave drain.withdraw_after at 0, never).
WITHDRAW_AFTER = 8.0
# c: datagrams may be lost only if sent between the removal and the spine's FIB change, plus this much.
LOSS_SLACK = 0.3


def unique_copy(topology: Topology, tag: str, workdir: Path) -> Topology:
    """The fabric with unique names (the lab, its container namespaces, the agents' sockets and drain files)
    and drain.withdraw_after set in each host's agent.toml."""
    rename = re.compile(r"\b(f\d[cs]\d)\b")
    nodes = {}
    for name, node in topology.nodes.items():
        binds = dict(node.binds)
        if node.role == "host":
            text = node.binds[AGENT_CONF].read_text()
            changed = text.replace(f"fabric-{name}.", f"fabric-{tag}-{name}.")
            changed = changed.replace("[drain]\n", f"[drain]\nwithdraw_after = {WITHDRAW_AFTER}\n")
            assert changed.count(f"fabric-{tag}-{name}.") == 2 and "withdraw_after" in changed, text
            copy = workdir / f"{name}-agent.toml"
            copy.write_text(changed)
            binds[AGENT_CONF] = copy
        nodes[name] = replace(node, binds=binds, exec=tuple(rename.sub(rf"\g<1>{tag}", line) for line in node.exec))
    return replace(topology, name=f"fabric-{tag}", nodes=nodes)


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedLab]:
    tag = uuid.uuid4().hex[:4]
    workdir = tmp_path_factory.mktemp("fabric")
    lab = EmbeddedLab(unique_copy(load_topology(REPO / "containerlab" / "fabric.clab.yml"), tag, workdir))
    started = time.monotonic()
    lab.up(progress=lambda _: None)
    try:
        wanted = {host_prefix(c.address) for c in containers(lab)}
        took = wait_for_routes(lab, "spine", wanted, timeout=300)
        print(f"fabric up in {time.monotonic() - started:.1f} s; every /32 in the spine's FIB {took:.1f} s after "
              "the agents started")
        yield lab
    finally:
        names = list(lab.state.containers) + list(lab.state.namespaces)
        lab.down()
        for host in ("host1", "host2", "host3", "host4"):
            Path(f"/run/ipvlan-bgp/fabric-{tag}-{host}.drained").unlink(missing_ok=True)
        assert not [n for n in names if (NETNS_DIR / n).exists()]


async def fib_watch(lab: EmbeddedLab, router: str) -> FibWatch:
    return await FibWatch(NETNS_DIR / lab.state.node_ns(router)).start()


@pytest.fixture
async def watches(fabric: EmbeddedLab) -> AsyncIterator[dict[str, FibWatch]]:
    found = {router: await fib_watch(fabric, router) for router in ("spine", "leaf1", "leaf2")}
    try:
        yield found
    finally:
        for watch in found.values():
            await watch.stop()


def anycast_holders(lab: EmbeddedLab) -> dict[str, Path]:
    """host -> namespace file of its container holding the anycast address."""
    return {c.host: NETNS_DIR / c.netns for c in containers(lab) if c.address == ANYCAST}


def stream(lab: EmbeddedLab, flows: int = 64, rate: float = 200.0) -> FlowStream:
    return FlowStream(NETNS_DIR / lab.state.node_ns("client"), ANYCAST, PORT, anycast_holders(lab),
                      flows=flows, rate=rate).start()


def hops(watch: FibWatch, prefix: str = ANYCAST_32) -> set[str]:
    return set(watch.routes.get(prefix, ()))


def bgp_paths(lab: EmbeddedLab, router: str, prefix: str) -> dict[str, dict[str, Any]]:
    """The router's BGP paths for ``prefix`` by the neighbour they came from."""
    data = json.loads(lab.routers[router].vtysh(f"show ip bgp {prefix} json") or "{}")
    return {path["peer"]["peerId"]: path for path in data.get("paths", [])}


def local_pref(path: dict[str, Any]) -> int:
    return int(path.get("locPrf", 100))


def gshut(path: dict[str, Any]) -> bool:
    return "graceful-shutdown" in path.get("community", {}).get("string", "")


def full_preference(lab: EmbeddedLab, router: str, prefix: str, peer: str) -> Callable[[], bool]:
    def check() -> bool:
        path = bgp_paths(lab, router, prefix).get(peer)
        return path is not None and local_pref(path) == 100 and not gshut(path)
    return check


def changed_at(watch: FibWatch, since: float, gateways: set[str], prefix: str = ANYCAST_32) -> float:
    """When ``prefix`` first got exactly ``gateways`` in the watched FIB after ``since`` (monotonic)."""
    return min(e.at for e in watch.events if e.prefix == prefix and e.at >= since and set(e.gateways) == gateways)


def agent_cli(lab: EmbeddedLab, host: str, command: str) -> dict[str, Any]:
    """``ipvlan-bgp COMMAND --json`` against the host's agent, over its status socket, as an operator runs it."""
    conf = lab.topology.nodes[host].binds[AGENT_CONF].read_text()
    (sock,) = re.findall(r'^socket = "([^"]+)"', conf, re.MULTILINE)
    out = subprocess.run([sys.executable, "-m", "agent.cli", command, "--socket", sock, "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


async def test_every_container_and_the_anycast_address_reach_the_spine_with_ecmp(
        fabric: EmbeddedLab, watches: dict[str, FibWatch]) -> None:
    spine = watches["spine"]
    names = neighbor_of(fabric, "spine")
    leaf_of = {"host1": "leaf1", "host2": "leaf1", "host3": "leaf2", "host4": "leaf2"}
    found = containers(fabric)
    assert {c.address for c in found} == {"10.11.0.11", "10.12.0.21", "10.13.0.31", "10.14.0.41", ANYCAST}
    for c in found:
        if c.address != ANYCAST:
            assert [names[g] for g in spine.routes[host_prefix(c.address)]] == [leaf_of[c.host]], c
    for network, leaf in (("10.11.0.0/24", "leaf1"), ("10.12.0.0/24", "leaf1"), ("10.13.0.0/24", "leaf2"),
                          ("10.14.0.0/24", "leaf2")):
        assert [names[g] for g in spine.routes[network]] == [leaf], network
    assert set(anycast_holders(fabric)) == {"host1", "host2", "host3"}
    await eventually(lambda: hops(spine) == {HOP["leaf1"], HOP["leaf2"]}, timeout=60,
                     what=f"the spine's ECMP for {ANYCAST_32} over leaf1 and leaf2: {hops(spine)}")
    await eventually(lambda: hops(watches["leaf1"]) == {HOP["host1"], HOP["host2"]}, timeout=60,
                     what=f"leaf1's ECMP over host1 and host2: {hops(watches['leaf1'])}")
    assert hops(watches["leaf2"]) == {HOP["host3"]}


async def test_flows_from_the_client_spread_over_every_anycast_host(fabric: EmbeddedLab) -> None:
    flows = stream(fabric, flows=128, rate=250.0)
    try:
        await eventually(lambda: len(flows.sent) >= 3 * 128, timeout=60, what="three datagrams of each flow")
    finally:
        flows.stop()
    served = flows.served_by()
    shares = {host: len(flows.flows_of(host)) for host in flows.receivers}
    print(f"128 flows from the client: {shares} flows, {{host: datagrams}} "
          f"{ {host: flows.count(host) for host in flows.receivers} }, {len(flows.lost())} of {len(flows.sent)} lost")
    assert flows.lost() == []
    assert all(len(hosts) == 1 for hosts in served.values()), f"a flow reached two hosts: {served}"
    for host, share in shares.items():  # expected 1/4, 1/4, 1/2 (the spine halves, leaf1 halves again)
        assert share >= 128 // 10, f"{host} served {share} of 128 flows: {shares}"


async def test_removing_one_anycast_container_leaves_the_others_serving(
        fabric: EmbeddedLab, watches: dict[str, FibWatch]) -> None:
    spine = watches["spine"]
    (netns,) = [c.netns for c in containers(fabric) if c.host == "host3" and c.address == ANYCAST]
    flows = stream(fabric)
    try:
        await eventually(lambda: all(flows.count(h) > 20 for h in flows.receivers), timeout=60,
                         what="every anycast host receiving")
        host3_flows = flows.flows_of("host3")
        removed = time.monotonic()
        in_netns(fabric.state.node_ns("host3"), f"ip -n {netns} link del {netns}")  # the container's ipvlan slave
        await eventually(lambda: hops(spine) == {HOP["leaf1"]}, timeout=60, what="leaf2 out of the spine's ECMP")
        converged = changed_at(spine, removed, {HOP["leaf1"]})
        await eventually(lambda: hops(watches["leaf2"]) == {HOP["spine-leaf2"]}, timeout=60,
                         what="leaf2 sending the anycast address up to the spine")
        after = time.monotonic()
        await eventually(lambda: flows.count("host1", sent_after=after) + flows.count("host2", sent_after=after)
                         >= 200, timeout=60, what="a second of traffic after the change")
    finally:
        flows.stop()
    lost = flows.lost()
    late = [s for s in lost if not removed - LOSS_SLACK <= s[2] <= converged + LOSS_SLACK]
    print(f"host3's anycast container removed: the spine's FIB dropped leaf2 after {converged - removed:.2f} s; "
          f"{len(lost)} of {len(flows.sent)} datagrams lost, from {len({s[1] for s in lost} - host3_flows)} flows not "
          f"served by host3 ({len(host3_flows)} of {flows.flows} were); host1 "
          f"{flows.count('host1')}, host2 {flows.count('host2')}, host3 {flows.count('host3')}")
    assert "10.13.0.31/32" in spine.routes  # host3's other container stays
    assert not late, f"datagrams lost outside the convergence window: {late[:10]}"
    assert {s[1] for s in lost} <= host3_flows, "a flow served by host1 or host2 lost datagrams"
    assert flows.count("host3", sent_after=converged + LOSS_SLACK) == 0


async def test_drain_withdraw_and_undrain_lose_no_datagram(
        fabric: EmbeddedLab, watches: dict[str, FibWatch]) -> None:
    leaf1 = watches["leaf1"]
    flows = stream(fabric)
    try:
        await eventually(lambda: flows.count("host1") > 20 and flows.count("host2") > 20, timeout=60,
                         what="host1 and host2 both receiving")
        asked = time.monotonic()
        answer = agent_cli(fabric, "host1", "drain")
        assert answer["drained"] and answer["withdraw_at"], answer
        drained = answer["since"] - time.time() + time.monotonic()  # when the agent drained, monotonic
        await eventually(lambda: hops(leaf1) == {HOP["host2"]}, timeout=60, what="host1 out of leaf1's ECMP")
        moved = changed_at(leaf1, asked, {HOP["host2"]})
        # RFC 8326: the drained paths are still there, at local-preference 0 (the withdraw comes later)
        paths = bgp_paths(fabric, "leaf1", ANYCAST_32)
        assert HOP["host1"] in paths, f"host1's path withdrawn before leaf1 moved away from it: {paths}"
        assert gshut(paths[HOP["host1"]]) and local_pref(paths[HOP["host1"]]) == 0, paths[HOP["host1"]]
        assert moved < drained + WITHDRAW_AFTER, "leaf1 left host1 only when its paths were withdrawn"
        # host1's own container: no other path, still used; the community travelled up, so the spine lowers it too
        await eventually(lambda: [(local_pref(p), gshut(p)) for p in bgp_paths(fabric, "spine", "10.11.0.11/32")
                                  .values()] == [(0, True)], timeout=30,
                         what="host1's own /32 at local-preference 0 on the spine")
        await eventually(lambda: HOP["host1"] not in bgp_paths(fabric, "leaf1", ANYCAST_32),
                         timeout=WITHDRAW_AFTER + 60, what="host1's paths withdrawn after drain.withdraw_after")
        withdrawn = time.monotonic()
        await eventually(lambda: flows.count("host2", sent_after=withdrawn) >= 200, timeout=60,
                         what="a second of traffic after the withdraw")
    finally:
        flows.stop()
    lost = flows.lost()
    print(f"drain of host1: leaf1 moved its share to host2 {moved - drained:.2f} s after `ipvlan-bgp drain`, the "
          f"paths were withdrawn {withdrawn - drained:.1f} s after it; {len(flows.sent)} datagrams over "
          f"{flows.flows} flows in {flows.sent[-1][2] - flows.sent[0][2]:.1f} s, {len(lost)} lost; host1 got "
          f"{flows.count('host1')} ({flows.count('host1', sent_after=moved + 0.5)} of them sent later than 0.5 s "
          f"after the move), host2 {flows.count('host2')}")
    assert lost == [], f"{len(lost)} datagrams lost during the drain: {lost[:10]}"
    assert flows.count("host1", sent_after=moved + 0.5) == 0, "host1 still got traffic after leaf1 moved"

    answer = agent_cli(fabric, "host1", "undrain")
    assert not answer["drained"], answer
    await eventually(lambda: hops(leaf1) == {HOP["host1"], HOP["host2"]}, timeout=60,
                     what="leaf1's ECMP over host1 and host2 again")
    for router, prefix, peer in (("leaf1", ANYCAST_32, HOP["host1"]), ("leaf1", "10.11.0.11/32", HOP["host1"]),
                                 ("spine", "10.11.0.11/32", HOP["leaf1"]), ("spine", "10.11.0.0/24", HOP["leaf1"])):
        await eventually(full_preference(fabric, router, prefix, peer), timeout=60,
                         what=f"{prefix} from {peer} back at full preference on {router}")
    again = stream(fabric)
    try:
        await eventually(lambda: again.count("host1") > 20, timeout=60, what="host1 serving again")
    finally:
        again.stop()
    assert again.lost() == []
