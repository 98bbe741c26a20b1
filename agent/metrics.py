"""Prometheus metrics (served on a loopback address by default).

Each Daemon owns a registry, so several agents in one process (tests) never share counters.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .endpoints import Endpoint
from .model import IPNetwork
from .state import PassResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.endpoints = Gauge("ipvlan_bgp_endpoints", "ipvlan L3/L3S endpoints seen", ["mode", "ready"], registry=r)
        self.prefixes = Gauge("ipvlan_bgp_prefixes_advertised", "Prefixes held in gobgpd",
                              ["kind", "family"], registry=r)
        self.refused = Gauge("ipvlan_bgp_prefixes_refused", "Prefixes wanted but refused now", ["reason"],
                             registry=r)
        self.refusals = Counter("ipvlan_bgp_prefix_refusals_total", "Refusals, once per prefix and episode",
                                ["reason"], registry=r)
        self.passes = Counter("ipvlan_bgp_reconcile_passes_total", "Reconcile passes", ["result"], registry=r)
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
        self.resyncs = Gauge("ipvlan_bgp_netlink_resyncs", "Namespace re-dumps after netlink errors (since start)",
                             registry=r)
        self.namespaces = Gauge("ipvlan_bgp_namespaces_watched", "Network namespaces watched", registry=r)
        self.errors = Counter("ipvlan_bgp_errors_total", "Errors by kind", ["kind"], registry=r)
        self.held = Gauge("ipvlan_bgp_endpoints_held_down", "Flapping endpoints held down", registry=r)
        self.healthy = Gauge("ipvlan_bgp_healthy", "1 while in sync with gobgpd and every task runs", registry=r)
        self.task_restarts = Counter("ipvlan_bgp_task_restarts_total", "Supervised tasks restarted after ending "
                                     "unexpectedly", ["task"], registry=r)
        self.reloads = Counter("ipvlan_bgp_config_reloads_total", "Configuration reloads (SIGHUP) by outcome",
                               ["result"], registry=r)

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)

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

    def observe_pass(self, result: PassResult) -> None:
        """Everything a reconcile pass tells, observed from outside it."""
        self.observe_endpoints(result.endpoints)
        self.held.set(len(result.held_down))
        self.namespaces.set(result.namespaces)
        self.resyncs.set(result.resyncs)
        if result.plan is None:
            self.passes.labels(result="error").inc()
            self.errors.labels(kind=result.error or "unknown").inc()
            return
        self.pass_seconds.observe(result.duration)
        self.passes.labels(result="ok").inc()
        self.paths_sent.labels(op="add").inc(len(result.plan.add))
        self.paths_sent.labels(op="withdraw").inc(len(result.plan.withdraw))
        if result.event_latency is not None:
            self.latency.observe(result.event_latency)
        self.observe_prefixes(result.advertised)
        self.refused.labels(reason="outside_networks").set(len(result.refused_outside))
        self.refused.labels(reason="max_prefixes").set(len(result.refused_cap))
        self.refusals.labels(reason="outside_networks").inc(result.newly_refused_outside)
        self.refusals.labels(reason="max_prefixes").inc(result.newly_refused_cap)
