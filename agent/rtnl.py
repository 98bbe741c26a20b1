"""rtnetlink, read the way discovery needs it: raw sockets, and only the attributes we use, with struct.

pyroute2 decodes every attribute of every message into Python objects; at 2,000 links that was ~85 % of
discovery's start-up (docs/benchmarks.md). Here a message costs a few ``struct.unpack_from`` calls.

The parsing half is pure (bytes -> ``Link`` / ``LinkGone`` / ``AddressChange``) and tested on real
netlink bytes captured from the kernel; ``RtnlSocket`` is the small asyncio edge around one socket.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

from .netlink_types import AddressChange, IPInterface, Link, LinkGone

NLMSG_HDR: Final = struct.Struct("=IHHII")  # length, type, flags, seq, port id
_IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG: Final = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR: Final = struct.Struct("=HH")  # length, type
_U32: Final = struct.Struct("=I")
_S32: Final = struct.Struct("=i")

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWNSID, RTM_GETNSID = 88, 90
NLM_F_REQUEST, NLM_F_DUMP_INTR, NLM_F_DUMP = 0x1, 0x10, 0x300
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100

IFLA_IFNAME, IFLA_LINK, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_LINK_NETNSID = 3, 5, 16, 18, 37
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_IPVLAN_MODE = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
NETNSA_NSID, NETNSA_FD = 1, 3
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_LINK_ATTRIBUTES = frozenset({IFLA_IFNAME, IFLA_LINK, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_LINK_NETNSID})
_ADDRESS_ATTRIBUTES = frozenset({IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS})

IFF_UP = 0x1
IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x08, 0x40
RT_SCOPE_UNIVERSE = 0
# IF_OPER_NOTPRESENT, _DOWN, _LOWERLAYERDOWN: an ipvlan slave in these cannot carry traffic (parent down or gone)
_DEAD_OPERSTATES = frozenset({1, 2, 3})

Change = Link | LinkGone | AddressChange


class Dump(NamedTuple):
    changes: list[Change]
    interrupted: bool  # NLM_F_DUMP_INTR: the table changed during the dump, which may have skipped entries


def attributes(data: bytes | memoryview, offset: int, end: int,
               wanted: frozenset[int] | None = None) -> dict[int, memoryview]:
    """The rtattrs in ``data[offset:end]`` (only the ``wanted`` types, if given), by type; the last one of a
    type wins. A link carries ~50 attributes and we read 5: slicing only those halves the parse."""
    view = memoryview(data)
    found: dict[int, memoryview] = {}
    while offset + 4 <= end:
        length, kind = _RTATTR.unpack_from(view, offset)
        if length < 4 or offset + length > end:
            break
        kind &= _NLA_TYPE_MASK
        if wanted is None or kind in wanted:
            found[kind] = view[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def _string(value: memoryview) -> str:
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")


def parse_link(data: bytes | memoryview, offset: int, end: int) -> Link:
    """The body of an RTM_NEWLINK (ifinfomsg + rtattrs) at ``data[offset:end]``."""
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(data, offset)
    attrs = attributes(data, offset + _IFINFOMSG.size, end, _LINK_ATTRIBUTES)
    kind, mode = "", None
    if (linkinfo := attrs.get(IFLA_LINKINFO)) is not None:
        info = attributes(linkinfo, 0, len(linkinfo))
        kind = _string(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else ""
        if kind == "ipvlan" and (data_attr := info.get(IFLA_INFO_DATA)) is not None:
            ipvlan = attributes(data_attr, 0, len(data_attr))
            if IFLA_IPVLAN_MODE in ipvlan:
                mode = int.from_bytes(ipvlan[IFLA_IPVLAN_MODE][:2], "little")
    operstate = attrs[IFLA_OPERSTATE][0] if IFLA_OPERSTATE in attrs else 0
    parent = _U32.unpack_from(attrs[IFLA_LINK])[0] if IFLA_LINK in attrs else None
    parent_nsid = _S32.unpack_from(attrs[IFLA_LINK_NETNSID])[0] if IFLA_LINK_NETNSID in attrs else None
    return Link(
        ifindex=index,
        ifname=_string(attrs[IFLA_IFNAME]) if IFLA_IFNAME in attrs else f"if{index}",
        kind=kind,
        up=bool(flags & IFF_UP) and operstate not in _DEAD_OPERSTATES,
        ipvlan_mode=mode,
        parent_ifindex=parent,
        parent_nsid=parent_nsid,
    )


def parse_address(data: bytes | memoryview, offset: int, end: int, deleted: bool) -> AddressChange | None:
    """The body of an RTM_NEWADDR / RTM_DELADDR; None if it carries no address."""
    family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(data, offset)
    attrs = attributes(data, offset + _IFADDRMSG.size, end, _ADDRESS_ATTRIBUTES)
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    if raw is None:
        return None
    interface: IPInterface
    if family == socket.AF_INET and len(raw) == 4:
        interface = ipaddress.IPv4Interface((bytes(raw), prefixlen))
    elif family == socket.AF_INET6 and len(raw) == 16:
        interface = ipaddress.IPv6Interface((bytes(raw), prefixlen))
    else:
        return None
    if IFA_FLAGS in attrs:
        flags = _U32.unpack_from(attrs[IFA_FLAGS])[0]
    usable = not deleted and scope == RT_SCOPE_UNIVERSE and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
    return AddressChange(index, interface, usable)


def messages(data: bytes | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body offset, end) of every netlink message in one datagram."""
    offset, size = 0, len(data)
    while offset + NLMSG_HDR.size <= size:
        length, kind, flags, seq, _ = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > size:
            break
        yield kind, flags, seq, offset + NLMSG_HDR.size, offset + length
        offset += (length + 3) & ~3


def changes(data: bytes | memoryview) -> Iterator[Change]:
    """The link and address changes in one datagram; other message types are skipped."""
    for kind, _, _, body, end in messages(data):
        change = parse_change(kind, data, body, end)
        if change is not None:
            yield change


def parse_change(kind: int, data: bytes | memoryview, body: int, end: int) -> Change | None:
    if kind == RTM_NEWLINK:
        return parse_link(data, body, end)
    if kind == RTM_DELLINK:
        return LinkGone(_IFINFOMSG.unpack_from(data, body)[2])
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        return parse_address(data, body, end, deleted=kind == RTM_DELADDR)
    return None


def _request(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


class RtnlSocket:
    """One NETLINK_ROUTE socket on the running loop. Used either for requests (dumps, nsid) or, bound to
    multicast groups, for events: never both, so every message on an event socket is an event."""

    BUFFER = 64 * 1024  # the kernel sends dump datagrams of at most 32 KiB

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._seq = 0
        self._buffer = bytearray(self.BUFFER)
        self._loop = asyncio.get_running_loop()

    def subscribe(self, groups: int) -> None:
        self.sock.bind((0, groups))

    def close(self) -> None:
        self.sock.close()

    async def receive(self) -> list[bytes]:
        """Wait for one datagram, then take every other one already queued (a burst becomes one batch).

        Raises OSError (ENOBUFS when the kernel had to drop events)."""
        n = await self._loop.sock_recv_into(self.sock, self._buffer)
        batch = [bytes(memoryview(self._buffer)[:n])]
        while True:
            try:
                n = self.sock.recv_into(self._buffer)
            except BlockingIOError:
                return batch
            batch.append(bytes(memoryview(self._buffer)[:n]))

    async def dump(self, kind: int, body: bytes) -> Dump:
        """Every link (RTM_GETLINK) or address (RTM_GETADDR) of the namespace."""
        seq = await self._send(kind, NLM_F_DUMP, body)
        found: list[Change] = []
        interrupted = False
        while True:
            data, replies = await self._receive_replies(seq)
            for msg_kind, flags, start, end in replies:
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if msg_kind == NLMSG_DONE:
                    return Dump(found, interrupted)
                change = parse_change(msg_kind, data, start, end)
                if change is not None:
                    found.append(change)

    async def dump_links(self) -> Dump:
        return await self.dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))

    async def dump_addresses(self) -> Dump:
        return await self.dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))

    async def nsid_of(self, namespace_fd: int) -> int | None:
        """The id this socket's namespace gives the namespace open at ``namespace_fd`` (None: no id yet)."""
        body = struct.pack("=Bxxx", socket.AF_UNSPEC) + _RTATTR.pack(8, NETNSA_FD) + _U32.pack(namespace_fd)
        seq = await self._send(RTM_GETNSID, 0, body)
        while True:
            data, replies = await self._receive_replies(seq)
            for msg_kind, _, start, end in replies:
                if msg_kind == RTM_NEWNSID:
                    attrs = attributes(data, start + 4, end)
                    nsid = _S32.unpack_from(attrs[NETNSA_NSID])[0] if NETNSA_NSID in attrs else -1
                    return nsid if nsid >= 0 else None

    async def _receive_replies(self, seq: int) -> tuple[memoryview, list[tuple[int, int, int, int]]]:
        """The next datagram, and (type, flags, body offset, end) of its messages that answer request ``seq``;
        an error reply is raised as OSError."""
        n = await self._loop.sock_recv_into(self.sock, self._buffer)
        data = memoryview(self._buffer)[:n]
        replies = []
        for msg_kind, flags, msg_seq, start, end in messages(data):
            if msg_seq != seq:
                continue
            if msg_kind == NLMSG_ERROR:
                _raise_error(data, start)
            replies.append((msg_kind, flags, start, end))
        return data, replies

    async def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        await self._loop.sock_sendall(self.sock, _request(kind, flags, self._seq, body))
        return self._seq


def _raise_error(data: memoryview, body: int) -> None:
    code = -_S32.unpack_from(data, body)[0]
    if code:
        raise OSError(code, f"netlink: {os.strerror(code)} ({errno.errorcode.get(code, code)})")
