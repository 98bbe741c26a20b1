"""Hostile input on the host tier (issue #11), no ipvlan needed. Only the kernel is believed: a process with
CAP_NET_ADMIN in a plain veth namespace multicasts a fake ipvlan-L3 RTM_NEWLINK + RTM_NEWADDR there; discovery
must show no endpoint and count the drop. The control case shows the same bytes make an endpoint when
believed, so the test can fail. Junk in a namespace directory is remembered, not retried."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
from pathlib import Path

import pytest
from ipvlan_bgp_lab.netns import create_netns, run_in

from agent.config import parse_config
from agent.discovery import UNMOUNTED_RETRY, Discovery, NamespaceGone, open_netlink_in
from agent.endpoints import NamespaceView, endpoints_in, uplink_ifindexes
from agent.routes import desired_routes
from agent.rtnl import (
    IFA_LOCAL,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_IPVLAN_MODE,
    IFLA_LINK,
    IFLA_LINK_NETNSID,
    IFLA_LINKINFO,
    IFLA_OPERSTATE,
    NLMSG_HDR,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_LINK,
    RtnlSocket,
    changes,
)

from ..helpers import eventually
from .test_discovery_host import unique

FORGED_IFINDEX = 4242
FORGED_ADDRESS = "10.77.0.9"
NLA_F_NESTED = 0x8000


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _message(kind: int, body: bytes) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, 0, 0, 0) + body


def forged_datagrams(parent_ifindex: int, parent_nsid: int) -> tuple[bytes, bytes]:
    """A kernel-looking RTM_NEWLINK of an up ipvlan L3 slave of our uplink, and an RTM_NEWADDR on it."""
    linkinfo = _attr(IFLA_INFO_KIND, b"ipvlan\0") + _attr(IFLA_INFO_DATA | NLA_F_NESTED,
                                                         _attr(IFLA_IPVLAN_MODE, struct.pack("=H", 1)))
    link = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, FORGED_IFINDEX, 0x1 | 0x40, 0) \
        + _attr(IFLA_IFNAME, b"eth0\0") + _attr(IFLA_OPERSTATE, b"\x06") \
        + _attr(IFLA_LINK, struct.pack("=I", parent_ifindex)) \
        + _attr(IFLA_LINK_NETNSID, struct.pack("=i", parent_nsid)) \
        + _attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo)
    address = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, FORGED_IFINDEX) \
        + _attr(IFA_LOCAL, socket.inet_aton(FORGED_ADDRESS))
    return _message(RTM_NEWLINK, link), _message(RTM_NEWADDR, address)


SENDER = """
import socket, sys
link, address = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.bind((0, 0))  # a user port id, like any process
assert s.getsockname()[0] != 0
s.sendto(link, (0, %d))
s.sendto(address, (0, %d))
"""


CONFIG = parse_config({"uplinks": ["lo"], "ownership_community": "65001:4242:1",
                       "networks": [{"prefix": "10.77.0.0/24"}]})


async def test_forged_multicast_from_a_veth_namespace_is_not_believed(discovery: Discovery, netns_dir: Path) -> None:
    path = create_netns(netns_dir / unique("c"))
    a, b = unique("fa"), unique("fb")
    run_in(None, "ip", "link", "add", a, "type", "veth", "peer", "name", b)
    try:
        run_in(None, "ip", "link", "set", b, "netns", str(path))  # gives the host namespace an nsid in there
        await eventually(lambda: (v := discovery.views().get(str(path))) is not None and v.own_nsid is not None,
                         what="the container's id for our namespace")
        view = discovery.views()[str(path)]
        assert view.own_nsid is not None
        own_view = discovery._own.view
        assert own_view is not None
        uplinks = uplink_ifindexes(own_view.links.values(), ["lo"])
        (lo_index,) = uplinks
        link, address = forged_datagrams(lo_index, view.own_nsid)

        # Control: believed, these bytes are an advertised /32.
        believed = NamespaceView(links=dict(view.links), addresses={k: set(v) for k, v in view.addresses.items()},
                                 own_nsid=view.own_nsid)
        for datagram in (link, address):
            for change in changes(datagram):
                believed.apply(change)
        fake = endpoints_in(str(path), believed, uplinks, own=False)
        assert [e.ifindex for e in fake] == [FORGED_IFINDEX]
        assert {str(p) for p in desired_routes(fake, CONFIG).routes} == {"10.77.0.0/24", f"{FORGED_ADDRESS}/32"}

        before = discovery.stats().dropped["forged"]
        run_in(path, sys.executable, "-c", SENDER % (RTMGRP_LINK, RTMGRP_IPV4_IFADDR), link.hex(), address.hex())
        await eventually(lambda: discovery.stats().dropped["forged"] >= before + 2, what="both datagrams dropped")
        assert FORGED_IFINDEX not in discovery.views()[str(path)].links
        assert discovery.snapshot() == ()
        assert desired_routes(discovery.snapshot(), CONFIG).routes == {}
    finally:
        run_in(None, "ip", "link", "del", a, check=False)


async def test_a_reply_sent_by_another_process_is_not_taken_for_the_kernels() -> None:
    """A request socket takes replies only from the kernel, with its own port id and sequence number: a
    forged NLMSG_DONE sent ahead of the kernel's reply is dropped and the real dump still arrives."""
    ours = RtnlSocket(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE))
    forger = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    try:
        forger.bind((0, 0))
        done = NLMSG_HDR.pack(NLMSG_HDR.size + 4, 3, 0, 1, ours.port) + b"\0\0\0\0"  # NLMSG_DONE for seq 1
        forger.sendto(done, (ours.port, 0))
        dump = await ours.dump_links()
        assert any(getattr(c, "ifname", "") == "lo" for c in dump.changes)
        assert ours.dropped["forged"] == 1
    finally:
        ours.close()
        forger.close()


async def test_junk_in_a_namespace_directory_is_remembered_not_retried(discovery: Discovery, netns_dir: Path) -> None:
    """A FIFO, a non-empty plain file, a symlink to a real namespace and a directory are looked at once and
    then skipped (the 20 ms retry is only for an empty file awaiting its bind mount, and only for a while);
    setns never happens through a symlink or into what is not nsfs."""
    real = create_netns(netns_dir / unique("c"))
    await eventually(lambda: discovery.stats().namespaces == 2, what="the real namespace")
    os.mkfifo(netns_dir / "fifo")
    (netns_dir / "plain").write_text("not a namespace")
    (netns_dir / "link").symlink_to(real)
    (netns_dir / "dir").mkdir()
    await eventually(lambda: len(discovery._junk) == 4, what="four junk entries remembered")
    assert discovery._next_scan_in() == discovery.rescan_interval  # no 20 ms retry for junk
    assert discovery.stats().namespaces == 2
    with pytest.raises(NamespaceGone):
        open_netlink_in(str(netns_dir / "link"), 1 << 16)  # O_NOFOLLOW
    with pytest.raises(NamespaceGone):
        open_netlink_in(str(netns_dir / "fifo"), 1 << 16)  # opened without blocking, then not nsfs
    (netns_dir / "pending").touch()  # what `ip netns add` makes before the bind mount
    await eventually(lambda: str(netns_dir / "pending") in discovery._unmounted, what="pending file seen")
    assert discovery._next_scan_in() == UNMOUNTED_RETRY
    for name in ("fifo", "plain", "link", "pending"):
        (netns_dir / name).unlink()
    (netns_dir / "dir").rmdir()


async def test_discovery_exposes_the_hosts_own_addresses(discovery: Discovery) -> None:
    """Address ownership needs them: an address of the host is never advertised from a container."""
    a, b = unique("ha"), unique("hb")
    run_in(None, "ip", "link", "add", a, "type", "veth", "peer", "name", b)
    try:
        run_in(None, "ip", "address", "add", "198.18.77.1/32", "dev", a)
        await eventually(lambda: ipaddress.ip_address("198.18.77.1") in discovery.host_addresses(),
                         what="the host's new address")
    finally:
        run_in(None, "ip", "link", "del", a, check=False)
    await eventually(lambda: ipaddress.ip_address("198.18.77.1") not in discovery.host_addresses(),
                     what="the address gone with its interface")
