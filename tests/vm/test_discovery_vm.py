"""Discovery on a real kernel with ipvlan (runs inside the VM)."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.containers import add_container, ifindex, netlink_in, populate
from ipvlan_bgp_lab.netns import create_netns, delete_netns, run_in
from pyroute2 import AsyncIPRoute

from agent.discovery import Discovery
from agent.endpoints import Endpoint, IpvlanMode

from .conftest import eventually, unique

pytestmark = pytest.mark.vm


def by_ns(discovery: Discovery) -> dict[str, Endpoint]:
    return {Path(e.netns).name: e for e in discovery.snapshot()}


def addrs(endpoint: Endpoint) -> set[str]:
    return {str(a) for a in endpoint.addresses}


async def synced(d: Discovery) -> Discovery:
    await asyncio.wait_for(d.synced.wait(), 30)
    return d


async def test_l3_and_l3s_found_l2_macvlan_veth_ignored(host: AsyncIPRoute, uplink: str, netns_dir: Path,
                                                        discovery_factory: Callable[..., Discovery]) -> None:
    # The kernel keeps one ipvlan mode per parent, so each mode gets its own (configured) uplink.
    l3s_uplink, l2_uplink, mv_parent = ("s" + uplink[1:], "l" + uplink[1:], "m" + uplink[1:])
    for name in (l3s_uplink, l2_uplink, mv_parent):
        run_in(None, "ip", "link", "add", name, "type", "dummy")
        run_in(None, "ip", "link", "set", name, "up")
    try:
        await add_container(host, uplink, netns_dir / "l3", ["10.1.100.2/24"], mode=IpvlanMode.L3)
        await add_container(host, l3s_uplink, netns_dir / "l3s", ["10.1.100.3/24"], mode=IpvlanMode.L3S)
        await add_container(host, l2_uplink, netns_dir / "l2", ["10.1.100.4/24"], mode=IpvlanMode.L2)
        other = create_netns(netns_dir / "other")
        run_in(None, "modprobe", "macvlan")
        run_in(None, "ip", "link", "add", "mv" + uplink[2:], "link", mv_parent, "netns", str(other), "type",
               "macvlan")
        run_in(None, "ip", "link", "add", "ve" + uplink[2:], "netns", str(other), "type", "veth", "peer", "name",
               "vp" + uplink[2:])
        d = await synced(discovery_factory([uplink, l3s_uplink, l2_uplink, mv_parent], netns_dir))
        found = by_ns(d)
        assert set(found) == {"l3", "l3s"}
        assert found["l3"].mode is IpvlanMode.L3 and found["l3s"].mode is IpvlanMode.L3S
        assert addrs(found["l3"]) == {"10.1.100.2/24"} and found["l3"].ready
        assert found["l3"].parent == uplink and found["l3s"].parent == l3s_uplink
        assert found["l3"].ifname == "eth0"
    finally:
        for name in (l3s_uplink, l2_uplink, mv_parent, "vp" + uplink[2:]):
            run_in(None, "ip", "link", "del", name, check=False)


async def test_address_lifecycle_and_link_state(host: AsyncIPRoute, uplink: str, netns_dir: Path,
                                                discovery_factory: Callable[..., Discovery]) -> None:
    ns = await add_container(host, uplink, netns_dir / "c", [], up=True)
    d = await synced(discovery_factory([uplink], netns_dir))
    await eventually(lambda: "c" in by_ns(d), what="endpoint without address")
    assert not by_ns(d)["c"].ready  # up, but no address yet

    inside = await netlink_in(ns)
    try:
        index = await ifindex(inside, "eth0")
        await inside.addr("add", index=index, address="10.1.100.2", prefixlen=24)
        await eventually(lambda: by_ns(d)["c"].ready, what="address added after link up")
        await inside.addr("add", index=index, address="10.1.100.9", prefixlen=24)  # secondary
        await inside.addr("add", index=index, address="2001:db8:100::2", prefixlen=64, flags=0x80)
        await eventually(lambda: addrs(by_ns(d)["c"]) == {"10.1.100.2/24", "10.1.100.9/24", "2001:db8:100::2/64"},
                         what="secondary and IPv6 addresses")
        await inside.link("set", index=index, state="down")
        await eventually(lambda: not by_ns(d)["c"].ready, what="link down -> not ready")
        await inside.link("set", index=index, state="up")
        await eventually(lambda: by_ns(d)["c"].ready, what="link up again")
        # The kernel flushed the IPv6 address on link down (keep_addr_on_down = 0); discovery must follow.
        await eventually(lambda: addrs(by_ns(d)["c"]) == {"10.1.100.2/24", "10.1.100.9/24"},
                         what="IPv6 address gone with the link down")
        await inside.addr("del", index=index, address="10.1.100.9", prefixlen=24)
        await eventually(lambda: addrs(by_ns(d)["c"]) == {"10.1.100.2/24"}, what="address removed")
    finally:
        inside.close()
    delete_netns(ns)
    await eventually(lambda: "c" not in by_ns(d), what="namespace deleted -> endpoint gone")


async def test_link_local_and_tentative_addresses_are_not_used(host: AsyncIPRoute, uplink: str, netns_dir: Path,
                                                               discovery_factory: Callable[..., Discovery]) -> None:
    ns = await add_container(host, uplink, netns_dir / "c", ["10.1.100.2/24"])
    run_in(ns, "ip", "addr", "add", "169.254.0.5/16", "dev", "eth0", "scope", "link")
    d = await synced(discovery_factory([uplink], netns_dir))
    await eventually(lambda: "c" in by_ns(d), what="endpoint")
    assert addrs(by_ns(d)["c"]) == {"10.1.100.2/24"}  # no fe80::, no scope-link address


async def test_namespace_mounted_later_is_found(host: AsyncIPRoute, uplink: str, netns_dir: Path,
                                                discovery_factory: Callable[..., Discovery]) -> None:
    d = await synced(discovery_factory([uplink], netns_dir))
    started = time.monotonic()
    await add_container(host, uplink, netns_dir / unique("docker-"), ["10.1.100.7/24"])
    await eventually(lambda: len(d.snapshot()) == 1 and d.snapshot()[0].ready, what="bind-mounted namespace")
    print(f"new namespace -> endpoint ready in discovery: {time.monotonic() - started:.3f} s")


@pytest.fixture
def host_b(netns_dir: Path) -> Iterator[Path]:
    """A second "host" namespace on the same kernel (requested before discovery_factory: outlives it)."""
    path = create_netns(netns_dir.parent / unique("hostb-"))
    try:
        yield path
    finally:
        delete_netns(path)


async def test_two_hosts_on_one_kernel_see_only_their_own(host_b: Path, host: AsyncIPRoute, uplink: str,
                                                          netns_dir: Path,
                                                          discovery_factory: Callable[..., Discovery]) -> None:
    b = await netlink_in(host_b)
    try:
        await b.link("add", ifname=uplink, kind="dummy")  # same name; likely the same ifindex too
        await b.link("set", index=await ifindex(b, uplink), state="up")
        await add_container(host, uplink, netns_dir / "mine", ["10.1.100.2/24"])
        await add_container(b, uplink, netns_dir / "theirs", ["10.1.100.3/24"])
        mine = await synced(discovery_factory([uplink], netns_dir))
        theirs = await synced(discovery_factory([uplink], netns_dir, host_netns=str(host_b)))
        await eventually(lambda: set(by_ns(mine)) == {"mine"}, what="root host sees only its container")
        await eventually(lambda: set(by_ns(theirs)) == {"theirs"}, what="host B sees only its container")
    finally:
        b.close()


async def test_thousand_endpoints(host: AsyncIPRoute, uplink: str, netns_dir: Path,
                                  discovery_factory: Callable[..., Discovery]) -> None:
    namespaces, per_ns = 50, 20
    created = time.monotonic()
    populate(uplink, netns_dir, [f"10.{100 + n // 250}.{n % 250}.{i + 2}/16" for n in range(namespaces)
                                 for i in range(per_ns)], per_ns, ifname="eth")
    created = time.monotonic() - created
    started = time.monotonic()
    d = discovery_factory([uplink], netns_dir)
    await asyncio.wait_for(d.synced.wait(), 300)
    synced_after = time.monotonic() - started
    found = d.snapshot()
    assert len(found) == namespaces * per_ns and all(e.ready for e in found)
    print(f"1,000 endpoints in {namespaces} namespaces: created in {created:.1f} s, "
          f"discovered (initial dump of all) in {synced_after:.2f} s")


async def test_overflow_with_tiny_buffer_converges(host: AsyncIPRoute, uplink: str, netns_dir: Path,
                                                   discovery_factory: Callable[..., Discovery]) -> None:
    ns = await add_container(host, uplink, netns_dir / "c", ["10.1.100.2/24"])
    d = await synced(discovery_factory([uplink], netns_dir, container_rcvbuf=1024))
    await eventually(lambda: "c" in by_ns(d), what="endpoint")
    expected = {"10.1.100.2/24"}
    commands = []
    for i in range(400):
        address = str(ipaddress.ip_address("10.1.101.0") + i)
        commands.append(f"address add {address}/24 dev eth0")
        expected.add(f"{address}/24")
    for i in range(1, 400, 2):  # odd ones: deleting a primary would take its secondaries along
        address = str(ipaddress.ip_address("10.1.101.0") + i)
        commands.append(f"address del {address}/24 dev eth0")
        expected.discard(f"{address}/24")
    batch = netns_dir.parent / f"{netns_dir.name}.batch"
    batch.write_text("\n".join(commands) + "\n")
    # Synchronous on purpose: the event loop reads nothing while 600 changes pour into a tiny buffer.
    run_in(ns, "ip", "-batch", str(batch))
    await eventually(lambda: addrs(by_ns(d)["c"]) == expected, what="exact truth after overflow")
    print(f"netlink resyncs after the burst: {d.stats().resyncs}")
    assert d.stats().resyncs >= 1
