"""RtnlSocket's request/reply handling, fed crafted datagrams through a socketpair (no kernel needed):
dumps end at NLMSG_DONE, an interrupted dump says so, a netlink error is raised, replies to other requests
and foreign sequence numbers are ignored; interrupted dumps are merged."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.discovery import NamespaceWatcher
from agent.endpoints import Endpoint, IpvlanMode, printable
from agent.netlink_types import AddressChange, Link, NamespaceView
from agent.netns import NamespaceGone
from agent.rtnl import (
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    RTM_GETLINK,
    RTM_NEWLINK,
    RTM_NEWNSID,
    Dump,
    NetlinkParseError,
    NetlinkTruncated,
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


async def test_a_truncated_datagram_is_counted_and_raised_for_a_resync(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    rtnl = RtnlSocket(ours)
    kernel.send(b"\0" * (RtnlSocket.BUFFER + 1))
    with pytest.raises(NetlinkTruncated):
        await rtnl.receive()
    assert rtnl.dropped["truncated"] == 1


async def test_a_parse_error_costs_the_namespace_a_resync_not_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """NamespaceWatcher.run survives the parser's error: it dumps the namespace again."""
    sessions = 0

    async def session(self: NamespaceWatcher) -> None:
        nonlocal sessions
        sessions += 1
        if sessions < 3:
            raise NetlinkParseError("garbage")
        raise NamespaceGone("done")

    monkeypatch.setattr(NamespaceWatcher, "_session", session)
    watcher = NamespaceWatcher(None, lambda: None, None, 0, -1)  # type: ignore[arg-type]
    await asyncio.wait_for(watcher.run(), 10)
    assert sessions == 3 and watcher.resyncs == 2


@pytest.mark.parametrize(("raw", "shown"), [
    ("eth0", "eth0"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("a\nb\\c", "a\\x0ab\\x5cc"),
    ("/run/netns/\x7f", "/run/netns/\\x7f"),
])
def test_names_from_containers_are_escaped(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert Endpoint(raw, raw, 1, IpvlanMode.L3, "eth0", (), True).label == f"{shown}:{shown}"
