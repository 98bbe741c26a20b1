"""RtnlSocket's request/reply handling, fed crafted datagrams through a socketpair (no kernel needed):
dumps end at NLMSG_DONE, an interrupted dump says so, a netlink error is raised, replies to other requests
and foreign sequence numbers are ignored; interrupted dumps are merged."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.discovery import NamespaceWatcher
from agent.netlink_types import AddressChange, Link, NamespaceView
from agent.rtnl import (
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    RTM_GETLINK,
    RTM_NEWLINK,
    RTM_NEWNSID,
    Dump,
    RtnlSocket,
    messages,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "netlink"


def message(kind: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    padded = body + b"\0" * (-len(body) % 4)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, flags, seq, 0) + padded


def newlink_bodies() -> list[bytes]:
    data = (FIXTURES / "newlink_ipvlan_l3_moved_in.bin").read_bytes()
    return [data[start:end] for kind, _, _, start, end in messages(data) if kind == RTM_NEWLINK]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield ours, kernel
    ours.close()
    kernel.close()


async def test_dump_collects_until_done_and_skips_other_sequence_numbers(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    rtnl = RtnlSocket(ours)
    (body,) = newlink_bodies()
    kernel.send(message(RTM_NEWLINK, 7, body))  # a stale reply to some earlier request: ignored
    kernel.send(message(RTM_NEWLINK, 1, body) + message(RTM_NEWLINK, 1, body))
    kernel.send(message(NLMSG_DONE, 1, struct.pack("=i", 0)))
    found, interrupted = await rtnl.dump_links()
    assert not interrupted and len(found) == 2 and all(isinstance(c, Link) and c.kind == "ipvlan" for c in found)
    request = kernel.recv(4096)
    length, kind, flags, seq, _ = NLMSG_HDR.unpack_from(request)
    assert (length, kind, seq) == (len(request), RTM_GETLINK, 1) and flags & 0x300 == 0x300  # NLM_F_DUMP


async def test_interrupted_dump_says_so(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    (body,) = newlink_bodies()
    kernel.send(message(RTM_NEWLINK, 1, body, flags=NLM_F_DUMP_INTR))
    kernel.send(message(NLMSG_DONE, 1, struct.pack("=i", 0)))
    dump = await RtnlSocket(ours).dump_links()
    assert dump.interrupted and len(dump.changes) == 1


async def test_interrupted_dumps_are_repeated_and_merged_never_shrinking_the_view() -> None:
    interface = ipaddress.ip_interface
    first = [AddressChange(2, interface("10.1.0.1/24"), True), AddressChange(2, interface("10.1.0.2/24"), True)]
    second = [AddressChange(2, interface("10.1.0.2/24"), True), AddressChange(2, interface("10.1.0.3/24"), True)]
    results = iter([Dump(first, True), Dump(second, True), Dump(second, False)])

    async def dump() -> Dump:
        return next(results)

    watcher = NamespaceWatcher(None, lambda: None, None, 0, -1)  # type: ignore[arg-type]
    view = NamespaceView()
    await watcher._dump_into(view, dump)
    assert {str(a) for a in view.addresses[2]} == {"10.1.0.1/24", "10.1.0.2/24", "10.1.0.3/24"}
    assert watcher.interrupted_dumps == 0  # the third dump was clean


async def test_netlink_error_reply_is_an_oserror_with_its_errno(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    kernel.send(message(NLMSG_ERROR, 1, struct.pack("=i", -errno.EPERM) + b"\0" * 16))
    with pytest.raises(OSError) as raised:
        await RtnlSocket(ours).dump_addresses()
    assert raised.value.errno == errno.EPERM


@pytest.mark.parametrize(("nsid", "expected"), [(3, 3), (-1, None)])
async def test_nsid_reply(pair: tuple[socket.socket, socket.socket], nsid: int, expected: int | None) -> None:
    ours, kernel = pair
    attribute = struct.pack("=HHi", 8, 1, nsid)  # NETNSA_NSID
    kernel.send(message(RTM_NEWNSID, 1, struct.pack("=Bxxx", socket.AF_UNSPEC) + attribute))
    assert await RtnlSocket(ours).nsid_of(5) == expected


async def test_receive_takes_every_queued_datagram_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    for seq in range(5):
        kernel.send(message(RTM_NEWLINK, seq, newlink_bodies()[0]))
    assert len(await RtnlSocket(ours).receive()) == 5
