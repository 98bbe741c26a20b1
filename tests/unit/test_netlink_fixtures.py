"""Classification and parsing on real netlink bytes, captured once from the VM kernel (see
tests/fixtures/netlink/capture.py): no kernel needed here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from agent.endpoints import IpvlanMode, NamespaceView, endpoints_in, parse_address, parse_link

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "netlink"


def messages(*names: str) -> list[Any]:
    found = []
    for name in names:
        for path in sorted(FIXTURES.glob(name)):
            found += list(MarshalRtnl().parse(path.read_bytes()))
    assert found, f"no fixture matches {names}"
    return found


def moved_in(mode: str) -> tuple[NamespaceView, Any]:
    view = NamespaceView()
    for msg in messages(f"newlink_ipvlan_{mode}_moved_in.bin"):
        view.apply(msg["event"], msg)
    (slave,) = [link for link in view.links.values() if link.kind == "ipvlan"]
    return view, slave


@pytest.mark.parametrize(("mode", "expected"), [("l3", IpvlanMode.L3), ("l3s", IpvlanMode.L3S),
                                                ("l2", IpvlanMode.L2)])
def test_ipvlan_link_as_seen_inside_the_container(mode: str, expected: IpvlanMode) -> None:
    _, slave = moved_in(mode)
    assert slave.ipvlan_mode == expected
    assert slave.parent_ifindex is not None and slave.parent_ifindex > 0
    assert slave.parent_nsid is not None  # the parent lives in another namespace


@pytest.mark.parametrize("mode", ["l3", "l3s", "l2"])
def test_only_l3_and_l3s_of_our_uplink_in_our_namespace_are_endpoints(mode: str) -> None:
    view, slave = moved_in(mode)
    uplinks = {slave.parent_ifindex: "eth0"}
    view.own_nsid = slave.parent_nsid
    found = endpoints_in("/run/netns/c", view, uplinks, own=False)
    assert [e.mode for e in found] == ([] if mode == "l2" else [IpvlanMode(slave.ipvlan_mode)])
    view.own_nsid = slave.parent_nsid + 1  # the same ifindex, but another host's namespace
    assert endpoints_in("/run/netns/c", view, uplinks, own=False) == []
    view.own_nsid = slave.parent_nsid
    assert endpoints_in("/run/netns/c", view, {slave.parent_ifindex + 1: "eth0"}, own=False) == []


def test_address_then_link_up_makes_a_ready_endpoint_and_deladdr_removes_it() -> None:
    view, slave = moved_in("l3")
    view.own_nsid = slave.parent_nsid
    uplinks = {slave.parent_ifindex: "eth0"}
    (endpoint,) = endpoints_in("c", view, uplinks, own=False)
    assert not endpoint.ready
    for msg in messages("l3_addr_then_up_*.bin"):
        view.apply(msg["event"], msg)
    (endpoint,) = endpoints_in("c", view, uplinks, own=False)
    assert endpoint.ready and [str(a) for a in endpoint.addresses if a.version == 4] == ["10.1.100.2/24"]
    for msg in messages("l3_deladdr.bin"):
        view.apply(msg["event"], msg)
    (endpoint,) = endpoints_in("c", view, uplinks, own=False)
    assert all(a.version == 6 for a in endpoint.addresses) and "10.1.100.2/24" not in map(str, endpoint.addresses)


def test_ipv6_global_kept_with_its_prefix_link_local_skipped() -> None:
    found = [parse_address(m) for m in messages("l3_ipv6_*.bin", "l3_addr_then_up_*.bin")
             if m["event"] == "RTM_NEWADDR"]
    usable = {str(a.interface) for a in found if a is not None}
    assert "2001:db8:100::2/64" in usable  # keeps its /64 (the aggregate); the /128 is derived later
    assert not any(a.startswith("fe80") for a in usable)


def test_parse_link_of_every_fixture_does_not_raise() -> None:
    for msg in messages("*.bin"):
        if msg["event"] in ("RTM_NEWLINK", "RTM_DELLINK"):
            parse_link(msg)
