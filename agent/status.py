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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .gobgp import GobgpError

if TYPE_CHECKING:
    from .daemon import Daemon


def status_of(daemon: Daemon, peers: list[dict[str, Any]] | None) -> dict[str, Any]:
    endpoints = daemon.last_endpoints
    stats = daemon.reconciler.stats
    held = daemon.reconciler.actual or {}
    return {
        "healthy": daemon.healthy,
        "gobgpd": {"target": daemon.config.gobgp.target, "reachable": daemon.gobgp_reachable,
                   "restarts_seen": daemon.gobgp_restarts, "peers": peers},
        "endpoints": {"total": len(endpoints), "ready": sum(e.ready for e in endpoints),
                      "held_down": len(daemon.held_down)},
        "prefixes": {"advertised": len(held),
                     "refused_outside_networks": sorted(map(str, stats.refused_outside)),
                     "refused_max_prefixes": sorted(map(str, stats.refused_cap)),
                     "refused": {reason.value: sorted(map(str, found)) for reason, found in stats.refused.items()}},
        "namespaces": daemon.discovery.stats().namespaces,
        "netlink_resyncs": daemon.discovery.stats().resyncs,
        "netlink_dropped": daemon.discovery.stats().dropped,
        "reconcile": {"passes": stats.passes, "failures": stats.failures, "last_at": stats.last_pass_at,
                      "last_duration_s": stats.last_duration},
    }


def routes_of(daemon: Daemon) -> list[dict[str, Any]]:
    held = daemon.reconciler.actual or {}
    sources = daemon.reconciler.desired.sources if daemon.reconciler.desired else {}
    rows = []
    for prefix, route in sorted(held.items(), key=lambda item: item[1].sort_key):
        a = route.attributes
        rows.append({
            "prefix": str(prefix),
            "kind": "host" if prefix.prefixlen == prefix.max_prefixlen else "aggregate",
            "next_hop": str(route.next_hop) if route.next_hop else "unspecified",
            "sources": list(sources.get(prefix, ())),
            "communities": [str(c) for c in a.communities],
            "large_communities": [str(c) for c in a.large_communities],
            "local_pref": a.local_pref,
            "med": a.med,
        })
    return rows


class StatusSocketError(Exception):
    """The status socket path holds something that is not a socket; it is never removed."""


class StatusServer:
    def __init__(self, daemon: Daemon, path: Path) -> None:
        self.daemon = daemon
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
                body: Any = routes_of(self.daemon)
            elif request == "status":
                body = status_of(self.daemon, await self._peers())
            else:
                body = {"error": f"unknown request {request!r}; ask 'status' or 'routes'"}
            writer.write(json.dumps(body).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _peers(self) -> list[dict[str, Any]] | None:
        try:
            peers = await asyncio.wait_for(self.daemon.client.list_peers(), 3)
        except (GobgpError, TimeoutError):
            return None
        return [{"address": p.address, "asn": p.asn, "state": p.state, "uptime_s": p.uptime} for p in peers]

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
