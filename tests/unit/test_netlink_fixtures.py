"""Classification and parsing on real netlink bytes, captured once from the VM kernel (see
tests/fixtures/netlink/capture.py): no kernel needed here."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.endpoints import IpvlanMode, endpoints_in
from agent.netlink_types import AddressChange, Link, NamespaceView
from agent.rtnl import Change, NetlinkParseError, changes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "netlink"


def messages(*names: str) -> list[Change]:
    found: list[Change] = []
    for name in names:
        for path in sorted(FIXTURES.glob(name)):
            found += list(changes(path.read_bytes()))
    assert found, f"no fixture matches {names}"
    return found


def moved_in(mode: str) -> tuple[NamespaceView, Link]:
    view = NamespaceView()
    for change in messages(f"newlink_ipvlan_{mode}_moved_in.bin"):
        view.apply(change)
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
    for change in messages("l3_addr_then_up_*.bin"):
        view.apply(change)
    (endpoint,) = endpoints_in("c", view, uplinks, own=False)
    assert endpoint.ready and [str(a) for a in endpoint.addresses if a.version == 4] == ["10.1.100.2/24"]
    for change in messages("l3_deladdr.bin"):
        view.apply(change)
    (endpoint,) = endpoints_in("c", view, uplinks, own=False)
    assert all(a.version == 6 for a in endpoint.addresses) and "10.1.100.2/24" not in map(str, endpoint.addresses)


def test_ipv6_global_kept_with_its_prefix_link_local_skipped() -> None:
    found = [c for c in messages("l3_ipv6_*.bin", "l3_addr_then_up_*.bin") if isinstance(c, AddressChange)]
    usable = {str(a.interface) for a in found if a.usable}
    assert "2001:db8:100::2/64" in usable  # keeps its /64 (the aggregate); the /128 is derived later
    assert not any(a.startswith("fe80") for a in usable)


def test_every_fixture_parses_the_same_as_pyroute2_does() -> None:
    """Our struct parser against pyroute2's generic decoder, on every captured message."""
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    deladdrs = 0
    for path in sorted(FIXTURES.glob("*.bin")):
        data = path.read_bytes()
        ours = list(changes(data))
        theirs = [m for m in MarshalRtnl().parse(data) if m["event"] in ("RTM_NEWLINK", "RTM_DELLINK",
                                                                          "RTM_NEWADDR", "RTM_DELADDR")]
        assert len(ours) == len(theirs), path.name
        for change, msg in zip(ours, theirs, strict=True):
            if isinstance(change, Link):
                assert change.ifindex == msg["index"] and change.ifname == msg.get_attr("IFLA_IFNAME")
                assert change.kind == (msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "")
                assert change.parent_ifindex == msg.get_attr("IFLA_LINK")
                assert change.parent_nsid == msg.get_attr("IFLA_LINK_NETNSID")
                if change.kind == "ipvlan":
                    assert change.ipvlan_mode == msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_IPVLAN_MODE")
            elif isinstance(change, AddressChange):
                address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                assert str(change.interface) == f"{address}/{msg['prefixlen']}" and change.ifindex == msg["index"]
                if msg["event"] == "RTM_DELADDR":
                    assert not change.usable, path.name
                    deladdrs += 1
    assert deladdrs > 0, "no RTM_DELADDR among the fixtures: the check above never ran"


def test_truncated_and_garbage_datagrams_raise_only_the_parse_error() -> None:
    data = (FIXTURES / "l3_deladdr.bin").read_bytes()
    assert list(changes(data[:0])) == []
    for cut in range(1, len(data)):
        with pytest.raises(NetlinkParseError):  # a partial message is refused (the namespace resyncs)
            list(changes(data[:cut]))
    with pytest.raises(NetlinkParseError):
        list(changes(b"\xff" * 64))
