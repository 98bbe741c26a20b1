"""Async client for the local gobgpd's gRPC API (GoBGP v3): the agent's only way to touch BGP.

Errors from gRPC are mapped in one place (``_mapped``) to the exception tree below:

    GobgpError                 anything that went wrong talking to gobgpd
    ├── GobgpUnavailable       no answer (not running, restarting, connection refused, deadline)
    ├── GobgpNotReady          answers, but has no BGP config yet (asn 0 / "hasn't started yet")
    └── GobgpRejected          gobgpd refused the request; carries its message

Every path written carries the ownership large community; ``list_owned_paths`` returns only those,
which is how the agent finds its own paths again after either side restarts (ListPath returns no
UUIDs). Paths are always deleted by explicit path: an empty DeletePath wipes every local path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message

from .gobgpapi import attribute_pb2 as attr_pb
from .gobgpapi import gobgp_pb2 as api
from .gobgpapi import gobgp_pb2_grpc as api_grpc
from .model import Attributes, Community, IPAddress, LargeCommunity, Route

log = logging.getLogger(__name__)

ORIGIN_IGP = 0
STREAM_BATCH = 1000  # paths per AddPathStream message: ~15-20k paths/s measured, vs ~1.5k/s unary
_FAMILIES = {
    4: api.Family(afi=api.Family.AFI_IP, safi=api.Family.SAFI_UNICAST),
    6: api.Family(afi=api.Family.AFI_IP6, safi=api.Family.SAFI_UNICAST),
}
_UNSPECIFIED = {4: "0.0.0.0", 6: "::"}


class GobgpError(Exception):
    """Talking to gobgpd failed."""


class GobgpUnavailable(GobgpError):
    """gobgpd did not answer (not running, restarting, or too slow)."""


class GobgpNotReady(GobgpError):
    """gobgpd answers but has no global BGP config yet, so it cannot take paths."""


class GobgpRejected(GobgpError):
    """gobgpd refused the request; the message is gobgpd's own."""


@contextlib.contextmanager
def _mapped(call: str) -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        code, detail = exc.code(), exc.details() or ""
        message = f"gobgpd {call}: {code.name}: {detail}"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            raise GobgpUnavailable(message) from None
        if "hasn't started yet" in detail:
            raise GobgpNotReady(message) from None
        raise GobgpRejected(message) from None


def _pack(message: Any) -> AnyPb:
    packed = AnyPb()
    packed.Pack(message)
    return packed


def route_to_path(route: Route) -> api.Path:
    """Build the API Path for a route (ORIGIN IGP, next hop, communities, LOCAL_PREF, MED)."""
    version = route.version
    nlri = _pack(attr_pb.IPAddressPrefix(prefix=str(route.prefix.network_address),
                                         prefix_len=route.prefix.prefixlen))
    next_hop = str(route.next_hop) if route.next_hop is not None else _UNSPECIFIED[version]
    pattrs = [_pack(attr_pb.OriginAttribute(origin=ORIGIN_IGP))]
    if version == 4:
        pattrs.append(_pack(attr_pb.NextHopAttribute(next_hop=next_hop)))
    else:
        pattrs.append(_pack(attr_pb.MpReachNLRIAttribute(family=_FAMILIES[6], next_hops=[next_hop], nlris=[nlri])))
    attrs = route.attributes
    if attrs.communities:
        pattrs.append(_pack(attr_pb.CommunitiesAttribute(communities=[c.to_u32() for c in attrs.communities])))
    if attrs.large_communities:
        pattrs.append(_pack(attr_pb.LargeCommunitiesAttribute(communities=[
            attr_pb.LargeCommunity(global_admin=c.global_admin, local_data1=c.local_data1,
                                   local_data2=c.local_data2)
            for c in attrs.large_communities
        ])))
    if attrs.local_pref is not None:
        pattrs.append(_pack(attr_pb.LocalPrefAttribute(local_pref=attrs.local_pref)))
    if attrs.med is not None:
        pattrs.append(_pack(attr_pb.MultiExitDiscAttribute(med=attrs.med)))
    return api.Path(family=_FAMILIES[version], nlri=nlri, pattrs=pattrs)


_READ_ATTRIBUTES: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        attr_pb.NextHopAttribute,
        attr_pb.MpReachNLRIAttribute,
        attr_pb.CommunitiesAttribute,
        attr_pb.LargeCommunitiesAttribute,
        attr_pb.LocalPrefAttribute,
        attr_pb.MultiExitDiscAttribute,
    )
}


def path_to_route(path: api.Path) -> Route | None:
    """Read an API Path back into a Route; None for anything that is not plain IPv4/IPv6 unicast."""
    nlri = attr_pb.IPAddressPrefix()
    if not path.nlri.Unpack(nlri):
        return None
    prefix = ipaddress.ip_network(f"{nlri.prefix}/{nlri.prefix_len}", strict=False)
    next_hop: IPAddress | None = None
    communities: list[Community] = []
    large: list[LargeCommunity] = []
    local_pref: int | None = None
    med: int | None = None
    for packed in path.pattrs:
        kind = _READ_ATTRIBUTES.get(packed.TypeName())
        if kind is None:
            continue
        attr = kind()
        packed.Unpack(attr)
        match attr:
            case attr_pb.NextHopAttribute():
                next_hop = ipaddress.ip_address(attr.next_hop)
            case attr_pb.MpReachNLRIAttribute() if attr.next_hops:
                next_hop = ipaddress.ip_address(attr.next_hops[0])
            case attr_pb.CommunitiesAttribute():
                communities.extend(Community.from_u32(raw) for raw in attr.communities)
            case attr_pb.LargeCommunitiesAttribute():
                large.extend(LargeCommunity(c.global_admin, c.local_data1, c.local_data2) for c in attr.communities)
            case attr_pb.LocalPrefAttribute():
                local_pref = attr.local_pref
            case attr_pb.MultiExitDiscAttribute():
                med = attr.med
    if next_hop is not None and next_hop.is_unspecified:
        next_hop = None
    return Route(prefix, next_hop, Attributes(tuple(communities), tuple(large), local_pref, med))


class GobgpEventKind(Enum):
    LOST = "lost"  # the API stopped answering: gobgpd died, restarts, or is unreachable
    READY = "ready"  # the API answers with a BGP config; after LOST its RIB may be empty
    PEER = "peer"  # a BGP neighbour changed state


@dataclass(frozen=True)
class GobgpEvent:
    kind: GobgpEventKind
    detail: str = ""


@dataclass(frozen=True)
class BgpInfo:
    asn: int
    router_id: str


@dataclass(frozen=True)
class PeerInfo:
    """One BGP neighbour as gobgpd's ListPeer reports it (``gobgp neighbor``). Counts are summed over the
    peer's address families; ``advertised`` is adj-out, after the export policy."""

    address: str
    asn: int
    state: str  # gobgpd's session state, lower case: "established", "active", "idle", ...
    uptime: float | None  # seconds since the session last came up (None: never)
    accepted: int = 0  # received and accepted by the import policy
    advertised: int = 0
    received: int = 0
    # gobgpd sets downtime when it creates the neighbor and whenever a session ends; a neighbor taken
    # administratively down from a session or a connection attempt has both timestamps cleared.
    downtime: float | None = None  # when the session last ended (epoch seconds)
    admin_down: bool = False  # administratively down now (the config's admin-down, or DisablePeer)
    configured_admin_down: bool = False  # the config file says admin-down = true (EnablePeer does not change it)

    @property
    def established(self) -> bool:
        return self.state == "established"


class BgpSpeaker(Protocol):
    """What the agent needs from gobgpd: the seam where tests put an in-memory stand-in.

    Every call raises ``GobgpError`` (or a subclass) when gobgpd does not do what was asked; a failed
    batch write may have applied part of the batch."""

    async def connect(self, timeout: float = 10.0) -> BgpInfo: ...
    async def add_paths(self, routes: Sequence[Route]) -> None: ...
    async def delete_paths(self, routes: Sequence[Route]) -> None: ...
    async def list_owned_paths(self, version: int) -> list[Route]: ...
    async def path_count(self, version: int) -> int: ...
    async def list_peers(self) -> list[PeerInfo]: ...
    async def enable_peer(self, address: str) -> None: ...
    def watch(self) -> AsyncIterator[GobgpEvent]: ...
    async def close(self) -> None: ...


def _channel(target: str, tls_ca_file: Path | None, tls_server_name: str | None) -> grpc.aio.Channel:
    # No client keepalive: gobgpd answers pings more often than every 5 minutes with GOAWAY.
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if tls_ca_file is None:
        return grpc.aio.insecure_channel(target, options=options)
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca_file.read_bytes())
    return grpc.aio.secure_channel(target, credentials, options=options)


class GobgpClient:
    """One channel to gobgpd. Use ``async with GobgpClient(...) as client`` or call ``close()``."""

    def __init__(
        self,
        target: str,
        owner: LargeCommunity,
        *,
        tls_ca_file: Path | None = None,
        tls_server_name: str | None = None,
        rpc_timeout: float = 30.0,
    ) -> None:
        self.target = target
        self.owner = owner
        self.rpc_timeout = rpc_timeout
        self._channel = _channel(target, tls_ca_file, tls_server_name)
        self._stub = api_grpc.GobgpApiStub(self._channel)

    async def __aenter__(self) -> GobgpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def get_bgp(self, timeout: float | None = None) -> BgpInfo:
        with _mapped("GetBgp"):
            reply = await self._stub.GetBgp(api.GetBgpRequest(), timeout=timeout or self.rpc_timeout)
        global_ = getattr(reply, "global")
        if global_.asn == 0:
            raise GobgpNotReady("gobgpd GetBgp: no global config yet (asn 0)")
        return BgpInfo(asn=global_.asn, router_id=global_.router_id)

    async def connect(self, timeout: float = 10.0, first_backoff: float = 0.05,
                      max_backoff: float = 2.0) -> BgpInfo:
        """Wait until gobgpd answers with a BGP config, retrying with exponential backoff."""
        deadline = time.monotonic() + timeout
        backoff = first_backoff
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await self.get_bgp(timeout=max(remaining, 0.01))
            except (GobgpUnavailable, GobgpNotReady) as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise type(exc)(f"{exc} (gave up after {timeout:g} s connecting to {self.target})") from None
                await asyncio.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, max_backoff)

    def _owned(self, routes: Iterable[Route]) -> list[api.Path]:
        paths = []
        for route in routes:
            if not route.owned_by(self.owner):
                raise ValueError(f"refusing to write {route.prefix} without the ownership community {self.owner}")
            paths.append(route_to_path(route))
        return paths

    async def add_paths(self, routes: Sequence[Route]) -> None:
        """Add or replace paths: one AddPath for a single route, AddPathStream for a batch."""
        paths = self._owned(routes)
        if not paths:
            return
        if len(paths) == 1:
            with _mapped("AddPath"):
                await self._stub.AddPath(api.AddPathRequest(path=paths[0]), timeout=self.rpc_timeout)
            return
        await self._stream(paths)

    async def _stream(self, paths: list[api.Path]) -> None:
        async def requests() -> AsyncIterator[api.AddPathStreamRequest]:
            for start in range(0, len(paths), STREAM_BATCH):
                yield api.AddPathStreamRequest(paths=paths[start:start + STREAM_BATCH])

        batches = -(-len(paths) // STREAM_BATCH)
        with _mapped("AddPathStream"):  # rpc_timeout per batch: a large table takes long, and that is fine
            await self._stub.AddPathStream(requests(), timeout=self.rpc_timeout * batches)

    async def delete_paths(self, routes: Sequence[Route]) -> None:
        """Withdraw paths, each by its explicit path (never an empty DeletePath, which wipes them all)."""
        paths = self._owned(routes)
        if not paths:
            return
        if len(paths) == 1:
            with _mapped("DeletePath"):
                await self._stub.DeletePath(api.DeletePathRequest(family=paths[0].family, path=paths[0]),
                                            timeout=self.rpc_timeout)
            return
        for path in paths:
            path.is_withdraw = True
        await self._stream(paths)

    async def path_count(self, version: int) -> int:
        """How many paths the global table holds for the family: one cheap GetTable. Anyone's: locally added
        ones, and whatever gobgpd's import policy accepts from peers (the shipped config accepts nothing)."""
        request = api.GetTableRequest(table_type=api.GLOBAL, family=_FAMILIES[version])
        with _mapped("GetTable"):
            reply = await self._stub.GetTable(request, timeout=self.rpc_timeout)
        return int(reply.num_path)

    async def list_paths(self, version: int) -> list[Route]:
        """Every locally originated path of the family (ours and anyone else's), sorted by prefix."""
        request = api.ListPathRequest(table_type=api.GLOBAL, family=_FAMILIES[version])
        routes: list[Route] = []
        # No overall deadline (10,000 paths took >30 s in the emulated VM, and a deadline there made every
        # retry fail the same way); instead each reply must come within rpc_timeout of the previous one.
        call = self._stub.ListPath(request)
        with _mapped("ListPath"):
            try:
                # read() returns grpc.aio.EOF (not in the type stubs) after the last reply
                while isinstance(reply := await asyncio.wait_for(call.read(), self.rpc_timeout),
                                 api.ListPathResponse):
                    for path in reply.destination.paths:
                        if path.neighbor_ip and path.neighbor_ip not in ("<nil>", "0.0.0.0", "::"):
                            continue  # learned from a peer, not added through the API
                        route = path_to_route(path)
                        if route is not None:
                            routes.append(route)
            except TimeoutError:
                call.cancel()
                raise GobgpUnavailable(f"gobgpd ListPath: no reply for {self.rpc_timeout:g} s") from None
        routes.sort(key=lambda r: r.sort_key)
        return routes

    async def list_owned_paths(self, version: int) -> list[Route]:
        return [route for route in await self.list_paths(version) if route.owned_by(self.owner)]

    async def list_peers(self) -> list[PeerInfo]:
        peers = []
        request = api.ListPeerRequest(enableAdvertised=True)  # without it gobgpd leaves `advertised` at 0
        with _mapped("ListPeer"):
            async for reply in self._stub.ListPeer(request, timeout=self.rpc_timeout):
                state = reply.peer.state
                timers = reply.peer.timers.state
                families = [family.state for family in reply.peer.afi_safis]
                peers.append(PeerInfo(
                    address=state.neighbor_address or reply.peer.conf.neighbor_address,
                    asn=state.peer_asn or reply.peer.conf.peer_asn,
                    state=api.PeerState.SessionState.Name(state.session_state).lower(),
                    # timers.state.uptime is when the session came up (a timestamp), not a duration
                    uptime=max(time.time() - timers.uptime.seconds, 0.0) if timers.uptime.seconds else None,
                    accepted=sum(f.accepted for f in families),
                    advertised=sum(f.advertised for f in families),
                    received=sum(f.received for f in families),
                    downtime=float(timers.downtime.seconds) if timers.downtime.seconds else None,
                    admin_down=state.admin_state == api.PeerState.DOWN,
                    configured_admin_down=reply.peer.conf.admin_down,
                ))
        return peers

    async def enable_peer(self, address: str) -> None:
        """Administratively enable a neighbor (gobgp neighbor ADDRESS enable); a no-op if it is already up."""
        with _mapped("EnablePeer"):
            await self._stub.EnablePeer(api.EnablePeerRequest(address=address), timeout=self.rpc_timeout)

    async def watch(self, retry_backoff: float = 0.2, max_backoff: float = 2.0) -> AsyncIterator[GobgpEvent]:
        """Yield READY when the API answers, LOST when a watch stream breaks, and PEER state changes.

        gobgpd has no start-time field; a broken WatchEvent stream is how a restart shows, and every
        READY after a LOST must be treated as "the RIB may be empty now".
        """
        backoff = retry_backoff
        connected = False
        while True:
            try:
                await self.get_bgp()
                if not connected:
                    yield GobgpEvent(GobgpEventKind.READY)
                    connected, backoff = True, retry_backoff
                request = api.WatchEventRequest(peer=api.WatchEventRequest.Peer())
                with _mapped("WatchEvent"):
                    async for reply in self._stub.WatchEvent(request):
                        if reply.HasField("peer") and reply.peer.type == reply.peer.STATE:
                            state = reply.peer.peer.state
                            name = api.PeerState.SessionState.Name(state.session_state).lower()
                            yield GobgpEvent(GobgpEventKind.PEER, f"{state.neighbor_address} {name}")
                raise GobgpUnavailable("gobgpd WatchEvent: stream ended")
            except GobgpRejected as exc:  # gobgpd still answers: subscribe again, no LOST
                log.warning("%s; watching again in %g s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)
            except (GobgpUnavailable, GobgpNotReady) as exc:
                if connected:
                    connected = False
                    yield GobgpEvent(GobgpEventKind.LOST, str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)
