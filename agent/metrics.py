"""Prometheus metrics (served on a loopback address by default), observed from outside the reconcile pass.

Each Daemon owns a registry, so several agents in one process (tests) never share counters. Every label
value known in advance is present (at 0) from the start, so ``rate()`` and alerts see the first increment.
Docs: docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence, Set

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import __version__
from .endpoints import Endpoint
from .gobgp import GobgpError, GobgpNotReady, GobgpRejected, GobgpUnavailable, PeerInfo
from .model import IPNetwork
from .routes import Refusal
from .rtnl import DROP_REASONS
from .state import PassResult

# `_created` series double every counter's series count and no dashboard reads them. prometheus_client can
# only switch them off process-wide; this process is the agent, so that is what we want.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

MAX_CONNECTIONS = 16  # scrapers at once; more are turned away
CONNECTION_TIMEOUT = 5.0  # seconds for a client to send its request (and take the answer)
REQUEST_LIMIT = 8192  # bytes of request head
# A pass at 10,000 endpoints in the emulated VM takes tens of seconds (docs/benchmarks.md): up to 5 minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
GOBGP_API = "v3"  # the GoBGP gRPC API generation the stubs speak (gobgpd 3.x; v4 changed the API)
SUPERVISED_TASKS = ("discovery", "gobgp-watch", "drift-checks", "watchdog")
RELOAD_RESULTS = ("ok", "refused", "invalid")

# errors_total{kind}: a fixed vocabulary, never Python class names.
ERROR_KINDS = ("gobgpd_unavailable", "gobgpd_not_ready", "gobgpd_rejected", "gobgpd_other", "internal")


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label of errors_total for a failed pass's exception."""
    for cls, kind in ((GobgpUnavailable, "gobgpd_unavailable"), (GobgpNotReady, "gobgpd_not_ready"),
                      (GobgpRejected, "gobgpd_rejected"), (GobgpError, "gobgpd_other")):
        if isinstance(exc, cls):
            return kind
    return "internal"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._server: asyncio.AbstractServer | None = None
        self._connections = 0
        self._limits = (MAX_CONNECTIONS, CONNECTION_TIMEOUT)
        self.endpoints = Gauge("ipvlan_bgp_endpoints", "ipvlan L3/L3S endpoints seen", ["mode", "ready"], registry=r)
        self.prefixes = Gauge("ipvlan_bgp_prefixes_advertised", "Prefixes held in gobgpd",
                              ["kind", "family"], registry=r)
        self.refused = Gauge("ipvlan_bgp_prefixes_refused", "Prefixes wanted but refused now", ["reason"],
                             registry=r)
        self.refusals = Counter("ipvlan_bgp_prefix_refusals_total", "Refusals, once per prefix and episode",
                                ["reason"], registry=r)
        self.passes = Counter("ipvlan_bgp_reconcile_passes_total", "Reconcile passes", ["result"], registry=r)
        self.last_success = Gauge("ipvlan_bgp_last_reconcile_success_timestamp_seconds",
                                  "Unix time the last reconcile pass succeeded (0: none yet)", registry=r)
        self.drift_repairs = Counter("ipvlan_bgp_drift_repairs_total",
                                     "Passes asked for by a drift check alone (RIB count check, periodic full "
                                     "re-read) that had to change gobgpd's paths", registry=r)
        self.build_info = Gauge("ipvlan_bgp_build_info", "Always 1: the agent's version and the GoBGP API it speaks",
                                ["version", "gobgp_api"], registry=r)
        self.build_info.labels(version=__version__, gobgp_api=GOBGP_API).set(1)
        self.session_up = Gauge("ipvlan_bgp_bgp_session_up", "1 while gobgpd's session with the peer is "
                                "Established (refreshed on every drift check and peer event)", ["peer"], registry=r)
        self.peer_prefixes = Gauge("ipvlan_bgp_bgp_prefixes", "Prefixes per peer: advertised (adj-out, after the "
                                   "export policy) and accepted (adj-in, after the import policy)",
                                   ["peer", "direction"], registry=r)
        self.pass_seconds = Histogram("ipvlan_bgp_reconcile_duration_seconds", "Duration of a reconcile pass",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("ipvlan_bgp_event_to_advertise_seconds",
                                 "From the first netlink event of a burst to the paths being in gobgpd",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.paths_sent = Counter("ipvlan_bgp_paths_sent_total", "Paths added or withdrawn in gobgpd", ["op"],
                                  registry=r)
        self.gobgp_up = Gauge("ipvlan_bgp_gobgpd_reachable", "1 while gobgpd's API answers", registry=r)
        self.gobgp_restarts = Counter("ipvlan_bgp_gobgpd_restarts_total", "gobgpd restarts (or API losses) seen",
                                      registry=r)
        self.resyncs = Counter("ipvlan_bgp_netlink_resyncs", "Namespace re-dumps after netlink errors",
                               registry=r)
        self._resyncs_seen = 0
        self._peers: list[str] = []
        self.namespaces = Gauge("ipvlan_bgp_namespaces_watched", "Network namespaces watched", registry=r)
        self.errors = Counter("ipvlan_bgp_errors_total", "Errors by kind", ["kind"], registry=r)
        self.netlink_dropped = Counter("ipvlan_bgp_netlink_dropped", "Netlink datagrams not believed (not sent "
                                       "by the kernel, or truncated)", ["reason"], registry=r)
        self._drops_seen: dict[str, int] = {}
        self.held = Gauge("ipvlan_bgp_endpoints_held_down", "Flapping endpoints held down", registry=r)
        self.healthy = Gauge("ipvlan_bgp_healthy", "1 while in sync with gobgpd and every task runs", registry=r)
        self.task_restarts = Counter("ipvlan_bgp_task_restarts_total", "Supervised tasks restarted after ending "
                                     "unexpectedly", ["task"], registry=r)
        self.reloads = Counter("ipvlan_bgp_config_reloads_total", "Configuration reloads (SIGHUP) by outcome",
                               ["result"], registry=r)
        self._preinitialise()

    def _preinitialise(self) -> None:
        for result in ("ok", "error"):
            self.passes.labels(result=result)
        for op in ("add", "withdraw"):
            self.paths_sent.labels(op=op)
        for reason in Refusal:
            self.refused.labels(reason=reason.value)
            self.refusals.labels(reason=reason.value)
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)
        for drop in DROP_REASONS:
            self.netlink_dropped.labels(reason=drop)
        for task in SUPERVISED_TASKS:
            self.task_restarts.labels(task=task)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result=result)

    async def serve(self, listen: str, max_connections: int = MAX_CONNECTIONS,
                    timeout: float = CONNECTION_TIMEOUT) -> None:
        """Serve GET /metrics on the running loop: at most ``max_connections`` at once (more are closed at
        once), each closed after ``timeout`` s without a complete request, one request per connection. No
        thread per connection (prometheus_client's server holds one per idle client)."""
        host, _, port = listen.rpartition(":")
        self._limits = (max_connections, timeout)
        self._server = await asyncio.start_server(self._answer, host.strip("[]") or "127.0.0.1", int(port),
                                                  limit=REQUEST_LIMIT)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        max_connections, timeout = self._limits
        if self._connections >= max_connections:
            writer.close()
            return
        self._connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            method, target = [*head.split(b"\r\n", 1)[0].split(b" "), b"", b""][:2]
            if method not in (b"GET", b"HEAD"):
                status, body, kind = "405 Method Not Allowed", b"", "text/plain"
            elif target.split(b"?", 1)[0] in (b"/", b"/metrics"):
                status, body, kind = "200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST
            else:
                status, body, kind = "404 Not Found", b"", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + (body if method == b"GET" else b""))
            await asyncio.wait_for(writer.drain(), timeout)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._connections -= 1
            writer.close()

    def observe_refusals(self, before: Mapping[Refusal, Set[IPNetwork]], now: Mapping[Refusal, Set[IPNetwork]]) -> None:
        """Refused prefixes now, and new refusals (once per prefix and episode), by reason."""
        for reason in sorted({*before, *now}):
            self.refused.labels(reason=reason.value).set(len(now.get(reason, ())))
            self.refusals.labels(reason=reason.value).inc(len(set(now.get(reason, ())) - set(before.get(reason, ()))))

    def observe_netlink_drops(self, dropped: Mapping[str, int]) -> None:
        """``dropped``: totals since start (discovery's); the counter follows them."""
        for reason, total in dropped.items():
            seen = self._drops_seen.get(reason, 0)
            if total > seen:
                self.netlink_dropped.labels(reason=reason).inc(total - seen)
                self._drops_seen[reason] = total

    def observe_peers(self, peers: Sequence[PeerInfo]) -> None:
        """gobgpd's neighbours now (ListPeer): a peer no longer configured loses its series."""
        self.session_up.clear()
        self.peer_prefixes.clear()
        self._peers = [peer.address for peer in peers]
        for peer in peers:
            self.session_up.labels(peer=peer.address).set(1 if peer.established else 0)
            self.peer_prefixes.labels(peer=peer.address, direction="advertised").set(peer.advertised)
            self.peer_prefixes.labels(peer=peer.address, direction="accepted").set(peer.accepted)

    def observe_gobgpd_lost(self) -> None:
        """gobgpd stopped answering: its sessions are down as far as anyone can tell."""
        for address in self._peers:
            self.session_up.labels(peer=address).set(0)

    def observe_resyncs(self, total: int) -> None:
        """``total``: discovery's count since start; the counter follows it."""
        if total > self._resyncs_seen:
            self.resyncs.inc(total - self._resyncs_seen)
            self._resyncs_seen = total

    def observe_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for e in endpoints:
            key = (e.mode.name, "yes" if e.ready else "no")
            counts[key] = counts.get(key, 0) + 1
        self.endpoints.clear()
        for (mode, ready), count in counts.items():
            self.endpoints.labels(mode=mode, ready=ready).set(count)

    def observe_prefixes(self, held: Iterable[IPNetwork]) -> None:
        counts = {(kind, family): 0 for kind in ("host", "aggregate") for family in ("ipv4", "ipv6")}
        for prefix in held:
            kind = "host" if prefix.prefixlen == prefix.max_prefixlen else "aggregate"
            counts[(kind, f"ipv{prefix.version}")] += 1
        for (kind, family), count in counts.items():
            self.prefixes.labels(kind=kind, family=family).set(count)

    def observe_pass(self, result: PassResult, drift_check: bool = False) -> None:
        """Everything a reconcile pass tells, observed from outside it. ``drift_check``: only a drift check
        (RIB check or periodic full re-read) asked for this pass, so any change it made repaired drift."""
        self.observe_endpoints(result.endpoints)
        self.held.set(len(result.held_down))
        self.namespaces.set(result.namespaces)
        self.observe_resyncs(result.resyncs)
        if result.plan is None:
            self.passes.labels(result="error").inc()
            self.errors.labels(kind=result.error_kind).inc()
            return
        self.pass_seconds.observe(result.duration)
        self.passes.labels(result="ok").inc()
        self.last_success.set(time.time())
        if drift_check and (result.plan.add or result.plan.withdraw):
            self.drift_repairs.inc()
        self.paths_sent.labels(op="add").inc(len(result.plan.add))
        self.paths_sent.labels(op="withdraw").inc(len(result.plan.withdraw))
        if result.event_latency is not None:
            self.latency.observe(result.event_latency)
        self.observe_prefixes(result.advertised)
        self.observe_refusals(result.refused_before, result.refused)
        self.observe_netlink_drops(result.netlink_dropped)
