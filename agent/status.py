"""The running agent's state, served as JSON on a root-only unix socket for `ipvlan-bgp status` / `routes`.

Protocol: the client sends one line (``status`` or ``routes``), the agent answers one JSON document and
closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from .gobgp import GobgpError, PeerInfo
from .peers import held_back
from .routes import Refusal
from .state import AgentState


def peer_json(peer: PeerInfo, held: Collection[str] = ()) -> dict[str, Any]:
    return {"address": peer.address, "asn": peer.asn, "state": peer.state, "uptime_s": peer.uptime,
            "prefixes_received": peer.received, "prefixes_accepted": peer.accepted,
            "prefixes_advertised": peer.advertised, "admin_down": peer.admin_down,
            "held_back": peer.address in held}


def overall(state: AgentState, peers: list[PeerInfo] | None) -> tuple[str, str | None]:
    """("healthy" | "degraded" | "unhealthy", why): degraded = in sync with gobgpd, but gobgpd has no
    Established session, so nothing the agent advertises reaches a router."""
    if not state.healthy:
        return "unhealthy", state.unhealthy_reason
    if peers is None:
        return "degraded", "gobgpd's peers are unknown (ListPeer failed)"
    if not any(p.established for p in peers):
        return "degraded", "no Established BGP peer" + ("" if peers else " (gobgpd has no neighbor configured)")
    return "healthy", None


def status_of(state: AgentState, peers: list[PeerInfo] | None) -> dict[str, Any]:
    endpoints = state.endpoints
    verdict, why = overall(state, peers)
    return {
        "state": verdict,
        "reason": why,
        "healthy": state.healthy,
        "unhealthy_reason": None if state.healthy else state.unhealthy_reason,
        "gobgpd": {"target": state.gobgp_target, "reachable": state.gobgp_reachable,
                   "restarts_seen": state.gobgp_restarts,
                   "peers": None if peers is None else [peer_json(p, held_back(peers)) for p in peers]},
        "missing_uplinks": list(state.missing_uplinks),
        "endpoints": {"total": len(endpoints), "ready": sum(e.ready for e in endpoints),
                      "held_down": state.held_down},
        "prefixes": {"advertised": len(state.advertised),
                     "refused_outside_networks": sorted(map(str, state.refused.get(Refusal.OUTSIDE, ()))),
                     "refused_max_prefixes": sorted(map(str, state.refused.get(Refusal.CAP, ()))),
                     "refused": {reason.value: sorted(map(str, found)) for reason, found in state.refused.items()}},
        "namespaces": state.namespaces,
        "netlink_resyncs": state.resyncs,
        "netlink_dropped": dict(state.netlink_dropped),
        "reconcile": {"passes": state.passes, "failures": state.failures, "last_at": state.last_pass_at,
                      "last_duration_s": state.last_duration},
    }


def routes_of(state: AgentState) -> list[dict[str, Any]]:
    rows = []
    for prefix, route in sorted(state.advertised.items(), key=lambda item: item[1].sort_key):
        a = route.attributes
        rows.append({
            "prefix": str(prefix),
            "kind": "host" if prefix.prefixlen == prefix.max_prefixlen else "aggregate",
            "next_hop": str(route.next_hop) if route.next_hop else "unspecified",
            "sources": list(state.sources.get(prefix, ())),
            "communities": [str(c) for c in a.communities],
            "large_communities": [str(c) for c in a.large_communities],
            "local_pref": a.local_pref,
            "med": a.med,
        })
    return rows


class StatusSocketError(Exception):
    """The status socket path holds something that is not a socket; it is never removed."""


class StatusServer:
    def __init__(self, state: Callable[[], AgentState], peers: Callable[[], Awaitable[list[PeerInfo]]],
                 path: Path) -> None:
        self._state = state
        self._list_peers = peers
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise StatusSocketError(f"status.socket {self.path} exists and is not a socket: refusing to "
                                        "replace it (fix status.socket or remove the file)")
            self.path.unlink()  # left over by a killed agent
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
            if request == "routes":
                body: Any = routes_of(self._state())
            elif request == "status":
                body = status_of(self._state(), await self._peers())
                body["tasks"] = len(asyncio.all_tasks())  # the fault suite checks that none leak
            else:
                body = {"error": f"unknown request {request!r}; ask 'status' or 'routes'"}
            writer.write(json.dumps(body).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _peers(self) -> list[PeerInfo] | None:
        try:
            return await asyncio.wait_for(self._list_peers(), 3)
        except (GobgpError, TimeoutError):
            return None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    self.path.unlink()


async def query(path: Path, request: str, timeout: float = 10.0) -> Any:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    try:
        writer.write(request.encode() + b"\n")
        await writer.drain()
        return json.loads(await asyncio.wait_for(reader.read(), timeout))
    finally:
        writer.close()
