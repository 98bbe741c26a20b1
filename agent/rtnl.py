"""rtnetlink, read the way discovery needs it: raw sockets, and only the attributes we use, with struct.

pyroute2 decodes every attribute of every message into Python objects; at 2,000 links that was ~85 % of
discovery's start-up (docs/benchmarks.md). Here a message costs a few ``struct.unpack_from`` calls.

The parsing half is pure (bytes -> ``Link`` / ``LinkGone`` / ``AddressChange``) and tested on real
netlink bytes captured from the kernel; ``RtnlSocket`` is the small asyncio edge around one socket.

Only the kernel is believed: any process with CAP_NET_ADMIN in a namespace may send rtnetlink multicasts
(or unicasts) there, so every datagram is received with its sender and dropped unless it comes from the
kernel (port id 0); a truncated one is dropped too, and lost data means a resync. On any byte string the
parser raises nothing but ``NetlinkParseError``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
from collections import Counter
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
DROP_REASONS: Final = ("forged", "truncated")


class NetlinkParseError(ValueError):
    """Bytes that are not the netlink the kernel sends: the only exception the parser raises."""


class NetlinkTruncated(OSError):
    """A datagram did not fit the receive buffer: data was lost, so the namespace must be dumped again."""


class Dump(NamedTuple):
    changes: list[Change]
    interrupted: bool  # NLM_F_DUMP_INTR: the table changed during the dump, which may have skipped entries


def attributes(data: bytes | memoryview, offset: int, end: int,
               wanted: frozenset[int] | None = None) -> dict[int, memoryview]:
    """The rtattrs in ``data[offset:end]`` (only the ``wanted`` types, if given), by type; the last one of a
    type wins. A link carries ~50 attributes and we read 5: slicing only those halves the parse."""
    view = memoryview(data)
    found: dict[int, memoryview] = {}
    end = min(end, len(view))
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


def _header(header: struct.Struct, data: bytes | memoryview, offset: int, end: int) -> tuple[int, ...]:
    if end - offset < header.size:
        raise NetlinkParseError(f"message body of {end - offset} bytes, shorter than its {header.size}-byte header")
    return header.unpack_from(data, offset)


def _fixed(value: memoryview, size: int, what: str) -> memoryview:
    if len(value) < size:
        raise NetlinkParseError(f"{what}: {len(value)} bytes, expected {size}")
    return value


def parse_link(data: bytes | memoryview, offset: int, end: int) -> Link:
    """The body of an RTM_NEWLINK (ifinfomsg + rtattrs) at ``data[offset:end]``."""
    _, _, index, flags, _ = _header(_IFINFOMSG, data, offset, end)
    attrs = attributes(data, offset + _IFINFOMSG.size, end, _LINK_ATTRIBUTES)
    kind, mode = "", None
    if (linkinfo := attrs.get(IFLA_LINKINFO)) is not None:
        info = attributes(linkinfo, 0, len(linkinfo))
        kind = _string(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else ""
        if kind == "ipvlan" and (data_attr := info.get(IFLA_INFO_DATA)) is not None:
            ipvlan = attributes(data_attr, 0, len(data_attr))
            if IFLA_IPVLAN_MODE in ipvlan:
                mode = int.from_bytes(ipvlan[IFLA_IPVLAN_MODE][:2], "little")
    operstate = _fixed(attrs[IFLA_OPERSTATE], 1, "IFLA_OPERSTATE")[0] if IFLA_OPERSTATE in attrs else 0
    parent = _U32.unpack_from(_fixed(attrs[IFLA_LINK], 4, "IFLA_LINK"))[0] if IFLA_LINK in attrs else None
    parent_nsid = _S32.unpack_from(_fixed(attrs[IFLA_LINK_NETNSID], 4, "IFLA_LINK_NETNSID"))[0] \
        if IFLA_LINK_NETNSID in attrs else None
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
    family, prefixlen, flags, scope, index = _header(_IFADDRMSG, data, offset, end)
    attrs = attributes(data, offset + _IFADDRMSG.size, end, _ADDRESS_ATTRIBUTES)
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    if raw is None:
        return None
    interface: IPInterface
    if family == socket.AF_INET and len(raw) == 4 and prefixlen <= 32:
        interface = ipaddress.IPv4Interface((bytes(raw), prefixlen))
    elif family == socket.AF_INET6 and len(raw) == 16 and prefixlen <= 128:
        interface = ipaddress.IPv6Interface((bytes(raw), prefixlen))
    else:
        return None
    if IFA_FLAGS in attrs:
        flags = _U32.unpack_from(_fixed(attrs[IFA_FLAGS], 4, "IFA_FLAGS"))[0]
    usable = not deleted and scope == RT_SCOPE_UNIVERSE and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
    return AddressChange(index, interface, usable)


def messages(data: bytes | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body offset, end) of every netlink message in one datagram."""
    for kind, flags, seq, _, body, end in messages_from(data):
        yield kind, flags, seq, body, end


def messages_from(data: bytes | memoryview) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(type, flags, seq, port id, body offset, end) of every netlink message in one datagram. A datagram
    that does not split into whole messages raises NetlinkParseError (the kernel never sends one)."""
    offset, size = 0, len(data)
    while offset < size:
        if offset + NLMSG_HDR.size > size:
            raise NetlinkParseError(f"{size - offset} trailing bytes at offset {offset}: not a netlink header")
        length, kind, flags, seq, port = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > size:
            raise NetlinkParseError(f"message length {length} at offset {offset} of a {size}-byte datagram")
        yield kind, flags, seq, port, offset + NLMSG_HDR.size, offset + length
        offset += (length + 3) & ~3


def changes(data: bytes | memoryview) -> Iterator[Change]:
    """The link and address changes in one datagram; other message types are skipped."""
    for kind, _, _, body, end in messages(data):
        change = parse_change(kind, data, body, end)
        if change is not None:
            yield change


def parse_change(kind: int, data: bytes | memoryview, body: int, end: int) -> Change | None:
    """The change carried by one message (None: a type discovery does not use). Raises only NetlinkParseError."""
    try:
        if kind == RTM_NEWLINK:
            return parse_link(data, body, end)
        if kind == RTM_DELLINK:
            return LinkGone(_header(_IFINFOMSG, data, body, end)[2])
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            return parse_address(data, body, end, deleted=kind == RTM_DELADDR)
    except NetlinkParseError:
        raise
    except (struct.error, ValueError, IndexError, KeyError, OverflowError, UnicodeError) as exc:
        raise NetlinkParseError(f"message type {kind}: {type(exc).__name__}: {exc}") from None
    return None


def parse_nsid(data: bytes | memoryview, body: int, end: int) -> int | None:
    """The nsid in an RTM_NEWNSID reply (rtgenmsg, padded to 4, then rtattrs); None: no id assigned."""
    if end - body < 4:
        raise NetlinkParseError("RTM_NEWNSID body shorter than its header")
    attrs = attributes(data, body + 4, end)
    if NETNSA_NSID not in attrs:
        return None
    nsid: int = _S32.unpack_from(_fixed(attrs[NETNSA_NSID], 4, "NETNSA_NSID"))[0]
    return nsid if nsid >= 0 else None


def _request(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


class RtnlSocket:
    """One NETLINK_ROUTE socket on the running loop. Used either for requests (dumps, nsid) or, bound to
    multicast groups, for events: never both, so every message on an event socket is an event.

    Datagrams not sent by the kernel are dropped and counted in ``dropped`` (by reason, see DROP_REASONS;
    a watcher passes one Counter to all its sockets). A socket of another family (a socketpair in unit
    tests) has no sender port: its datagrams are taken as the kernel's."""

    BUFFER = 64 * 1024  # the kernel sends dump datagrams of at most 32 KiB

    def __init__(self, sock: socket.socket, dropped: Counter[str] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.dropped: Counter[str] = dropped if dropped is not None else Counter()
        self._netlink = sock.family == socket.AF_NETLINK
        self._port: int | None = None  # our own nl_pid, once bound
        self._seq = 0
        self._buffer = bytearray(self.BUFFER)
        self._loop = asyncio.get_running_loop()

    def subscribe(self, groups: int) -> None:
        self.sock.bind((0, groups))

    def close(self) -> None:
        self.sock.close()

    @property
    def port(self) -> int:
        """The port id the kernel gave this socket (replies to our requests carry it); 0 if not netlink."""
        if self._port is None:
            if not self._netlink:
                self._port = 0
            else:
                if self.sock.getsockname()[0] == 0:
                    self.sock.bind((0, 0))  # autobind: the kernel picks a unique port id
                self._port = int(self.sock.getsockname()[0])
        return self._port

    def _take(self) -> int | None:
        """One queued datagram into the buffer: its length, or None if it was dropped (not from the kernel).

        Raises BlockingIOError when nothing is queued, NetlinkTruncated if the kernel's datagram did not fit,
        OSError (ENOBUFS when the kernel had to drop events)."""
        n, sender = self.sock.recvfrom_into(self._buffer, 0, socket.MSG_TRUNC)
        if self._netlink and (not isinstance(sender, tuple) or sender[0] != 0):
            self.dropped["forged"] += 1
            return None
        if n > len(self._buffer):
            self.dropped["truncated"] += 1
            raise NetlinkTruncated(errno.EMSGSIZE, f"netlink datagram of {n} bytes truncated to {len(self._buffer)}")
        return n

    async def _readable(self) -> None:
        fd = self.sock.fileno()
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_reader(fd)

    async def _next(self) -> int:
        """Wait for the next datagram from the kernel; its length in the buffer."""
        while True:
            try:
                n = self._take()
            except BlockingIOError:
                await self._readable()
                continue
            if n is not None:
                return n

    async def receive(self) -> list[bytes]:
        """Wait for one datagram, then take every other one already queued (a burst becomes one batch).

        Raises OSError (ENOBUFS when the kernel had to drop events; NetlinkTruncated)."""
        n = await self._next()
        batch = [bytes(memoryview(self._buffer)[:n])]
        while True:
            try:
                taken = self._take()
            except BlockingIOError:
                return batch
            if taken is not None:
                batch.append(bytes(memoryview(self._buffer)[:taken]))

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
                    return parse_nsid(data, start, end)

    async def _receive_replies(self, seq: int) -> tuple[memoryview, list[tuple[int, int, int, int]]]:
        """The next datagram, and (type, flags, body offset, end) of its messages that answer request ``seq``
        (sequence number and our port id: a reply to another socket's request is not ours); an error reply is
        raised as OSError."""
        port = self.port
        n = await self._next()
        data = memoryview(self._buffer)[:n]
        return data, replies_to(data, seq, port)

    async def _send(self, kind: int, flags: int, body: bytes) -> int:
        _ = self.port  # bound before the request leaves, so its replies can be told apart
        self._seq += 1
        await self._loop.sock_sendall(self.sock, _request(kind, flags, self._seq, body))
        return self._seq


def replies_to(data: bytes | memoryview, seq: int, port: int) -> list[tuple[int, int, int, int]]:
    """(type, flags, body offset, end) of the messages in ``data`` that answer request ``seq`` of the socket
    with port id ``port``. Raises OSError for an error reply, NetlinkParseError for bytes that are not netlink."""
    found = []
    for kind, flags, msg_seq, msg_port, start, end in messages_from(data):
        if msg_seq != seq or msg_port != port:
            continue
        if kind == NLMSG_ERROR:
            _raise_error(data, start)
        found.append((kind, flags, start, end))
    return found


def _raise_error(data: bytes | memoryview, body: int) -> None:
    if len(data) - body < 4:
        raise NetlinkParseError("NLMSG_ERROR without an error code")
    code = -_S32.unpack_from(data, body)[0]
    if code < 0 or code > 4095:
        raise NetlinkParseError(f"NLMSG_ERROR with error code {-code}")
    if code:
        raise OSError(code, f"netlink: {os.strerror(code)} ({errno.errorcode.get(code, code)})")
