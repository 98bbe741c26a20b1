"""Discovery on this machine's kernel (netns, veth, macvlan; no ipvlan here - those tests run in the VM)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from ipvlan_bgp_lab.containers import ifindex, netlink_in
from ipvlan_bgp_lab.netns import create_netns, delete_netns, run_in

from agent.discovery import Discovery
from agent.netlink_types import Link

from ..helpers import eventually


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


async def test_namespace_appears_and_disappears(discovery: Discovery, netns_dir: Path) -> None:
    assert discovery.stats().namespaces == 1  # only our own
    path = create_netns(netns_dir / unique("c"))
    await eventually(lambda: discovery.stats().namespaces == 2, what="namespace found by inotify")
    delete_netns(path)
    await eventually(lambda: discovery.stats().namespaces == 1, what="namespace forgotten")


async def test_periodic_rescan_finds_what_inotify_cannot_see(discovery_factory: Callable[..., Discovery],
                                                              tmp_path: Path) -> None:
    """timers.netns_rescan: a directory that did not exist at start has no inotify watch, so only the
    periodic rescan finds a namespace created in it; a twin with a long rescan proves inotify did not."""
    late_dir = tmp_path / "created-later"
    rescanning = discovery_factory(["lo"], rescan_interval=0.2, dirs=[late_dir])
    not_rescanning = discovery_factory(["lo"], rescan_interval=3600, dirs=[late_dir])
    for d in (rescanning, not_rescanning):
        await asyncio.wait_for(d.synced.wait(), 10)
    late_dir.mkdir()
    path = create_netns(late_dir / unique("c"))
    try:
        await eventually(lambda: rescanning.stats().namespaces == 2, what="namespace found by the rescan")
        assert not_rescanning.stats().namespaces == 1, "found without a rescan: this test proves nothing"
    finally:
        delete_netns(path)


async def test_two_mounts_of_one_namespace_count_once(discovery: Discovery, netns_dir: Path) -> None:
    first = create_netns(netns_dir / unique("c"))
    second = netns_dir / unique("alias")
    second.touch()
    run_in(None, "mount", "--bind", str(first), str(second))
    await eventually(lambda: discovery.stats().namespaces == 2, what="namespace found")
    assert discovery.stats().namespaces == 2


async def test_veth_and_macvlan_are_not_endpoints(discovery_factory: Callable[..., Discovery],
                                                  netns_dir: Path) -> None:
    """The uplink is the real parent of both the macvlan and the veth peer, so only their kind keeps them out."""
    path = create_netns(netns_dir / unique("c"))
    a, b = unique("va"), unique("vb")
    run_in(None, "ip", "link", "add", a, "type", "veth", "peer", "name", b)
    try:
        run_in(None, "ip", "link", "set", a, "up")
        discovery = discovery_factory([a])
        await asyncio.wait_for(discovery.synced.wait(), 10)
        run_in(None, "ip", "link", "add", "mv0", "link", a, "netns", str(path), "type", "macvlan")
        run_in(None, "ip", "link", "set", b, "netns", str(path))
        run_in(path, "ip", "addr", "add", "10.1.100.2/24", "dev", "mv0")
        run_in(path, "ip", "addr", "add", "10.1.100.3/24", "dev", b)
        run_in(path, "ip", "link", "set", "mv0", "up")
        run_in(path, "ip", "link", "set", b, "up")

        def links_seen() -> dict[str, object]:
            view = discovery.views().get(str(path))
            if view is None:
                return {}
            return {link.ifname: link for link in view.links.values()
                    if link.up and view.addresses.get(link.ifindex)}

        await eventually(lambda: {"mv0", b} <= set(links_seen()), what="macvlan and veth up with addresses")
        seen, view = links_seen(), discovery.views()[str(path)]
        for name in ("mv0", b):  # the parent really is our uplink, as the agent sees it: only the kind refuses them
            link = seen[name]
            assert isinstance(link, Link) and link.parent_ifindex == socket.if_nametoindex(a)
            assert link.parent_nsid is not None and link.parent_nsid == view.own_nsid
        assert discovery.snapshot() == ()
        await eventually(lambda: {(ns, link.ifname, why) for ns, link, why in discovery.ignored()} >= {
            (str(path), "mv0", "not an ipvlan slave (macvlan)"), (str(path), b, "not an ipvlan slave (veth)")},
            what="`endpoints --all` reasons")
        assert all(link.ifname != "lo" for _, link, _ in discovery.ignored())
    finally:
        run_in(None, "ip", "link", "del", a, check=False)


async def test_missing_uplinks_are_reported(discovery: Discovery) -> None:
    assert discovery.stats().missing_uplinks == ()  # "lo" exists
    discovery.reconfigure(["lo", "nosuchlink0"], discovery.netns_dirs, discovery.rescan_interval)
    assert discovery.stats().missing_uplinks == ("nosuchlink0",)


async def test_changes_wake_the_consumer(discovery: Discovery, netns_dir: Path) -> None:
    path = create_netns(netns_dir / unique("c"))
    await eventually(lambda: discovery.views().get(str(path)) is not None, what="namespace dumped")
    changed = asyncio.Event()
    discovery.subscribe(changed.set)  # after the dump's own wake-up, which happened when its view was published
    view = discovery.views()[str(path)]
    (lo,) = [link for link in view.links.values() if link.ifname == "lo"]
    assert not lo.up and not changed.is_set()
    run_in(path, "ip", "link", "set", "lo", "up")
    await asyncio.wait_for(changed.wait(), 5)
    assert discovery.views()[str(path)].links[lo.ifindex].up, "woken, but not by the link change"


async def test_changes_made_through_netlink_by_another_program_are_not_lost(discovery: Discovery,
                                                                            netns_dir: Path) -> None:
    """A kernel notification carries the sequence number of the request that caused it; another program's
    small sequence numbers must not be mistaken for replies to the agent's own requests."""
    path = create_netns(netns_dir / unique("c"))
    run_in(path, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    await eventually(lambda: str(path) in discovery.views(), what="namespace found")
    other_program = await netlink_in(path)
    try:
        index = await ifindex(other_program, "v0")
        for i in range(60):
            await other_program.addr("add", index=index, address=f"10.1.100.{i + 1}", prefixlen=24)
        for i in range(0, 60, 3):
            await other_program.addr("del", index=index, address=f"10.1.100.{i + 2}", prefixlen=24)
    finally:
        other_program.close()
    expected = {f"10.1.100.{i + 1}/24" for i in range(60)} - {f"10.1.100.{i + 2}/24" for i in range(0, 60, 3)}

    def view_addresses() -> set[str]:
        view = discovery.views().get(str(path))
        return {str(a) for a in view.addresses.get(index, set())} if view else set()

    await eventually(lambda: view_addresses() == expected, what="every change seen")
