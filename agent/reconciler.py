"""Apply plans to gobgpd and remember the state actually reached.

``actual`` is what gobgpd holds under our ownership community. It is re-read from gobgpd when
unknown: at start (adopting what a previous run left, so live paths are never withdrawn and re-added),
after gobgpd restarts, on the periodic full reconcile or when the cheap check between two of them sees
the table move, and after any failed apply (a broken AddPathStream may have applied part of a batch,
so only a fresh read tells the truth).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .config import AgentConfig
from .endpoints import Endpoint
from .gobgp import BgpSpeaker
from .ipam import with_docker
from .logs import source_fields
from .model import Attributes, IPAddress, IPNetwork, Route
from .routes import Desired, Plan, Refusal, desired_routes, plan

log = logging.getLogger(__name__)


@dataclass
class ReconcileStats:
    passes: int = 0
    full_reads: int = 0
    added: int = 0
    withdrawn: int = 0
    failures: int = 0
    last_pass_at: float | None = None  # wall clock
    last_duration: float = 0.0
    refused_outside: set[IPNetwork] = field(default_factory=set)
    refused_cap: set[IPNetwork] = field(default_factory=set)
    refused: dict[Refusal, set[IPNetwork]] = field(default_factory=dict)  # every reason, outside and cap too


LOG_EACH_UP_TO = 50  # a larger change (a start, a resync) is one summary line; each route then goes to debug


def _log_routes(verb: str, routes: tuple[Route, ...], desired: Desired) -> None:
    level = logging.INFO
    if len(routes) > LOG_EACH_UP_TO:
        log.info("%s %d path(s): %s ... %s", verb, len(routes), routes[0].prefix, routes[-1].prefix,
                 extra={"count": len(routes), "first_prefix": str(routes[0].prefix),
                        "last_prefix": str(routes[-1].prefix)})
        level = logging.DEBUG
    if log.isEnabledFor(level):
        for route in routes:
            sources = desired.sources.get(route.prefix, ())
            log.log(level, "%s %s%s", verb, route.prefix, f" ({', '.join(sources)})" if sources else "",
                    extra={"prefix": str(route.prefix), **source_fields(sources)})


class Reconciler:
    def __init__(self, client: BgpSpeaker, config: AgentConfig) -> None:
        self.client = client
        self.config = config
        self.actual: dict[IPNetwork, Route] | None = None  # None: unknown, read it before the next plan
        self.desired: Desired | None = None
        self.stats = ReconcileStats()
        self.host_addresses: frozenset[IPAddress] = frozenset()  # the host's own: never advertised (set by the owner)
        # What we advertised last, kept across invalidate(): after gobgpd restarts with an empty RIB these keep
        # their place under the caps.
        self.advertised: set[IPNetwork] = set()
        # With [docker] on (set by the owner, see agent.docker_ownership): communities container labels add per
        # host prefix, what Docker's IPAM refused, and `frozen` (hold what gobgpd has) until Docker first answers.
        self.extras: Mapping[IPNetwork, Attributes] = {}
        self.docker_refused: Mapping[IPNetwork, tuple[Refusal, tuple[str, ...]]] = {}
        self.frozen = False
        # gobgpd's path count per family as implied by our last full read and our own changes since.
        self._expected_counts: dict[int, int] | None = None

    async def table_moved(self) -> bool:
        """Cheap drift check, two GetTable calls: do gobgpd's path counts differ from what our last full read
        plus our own changes since imply? True also when that is unknown.

        GetTable counts every path in gobgpd's global table. With the shipped gobgpd.toml nothing from a peer
        gets in (its import policy accepts local paths only), so the counts are the locally added paths: exact
        for ours as long as the agent is gobgpd's only API writer. Another writer's change reads as a move (the
        cost is a full re-read); a deletion of ours hidden by another writer's addition in the same interval is
        left to the periodic full re-read. Where a site imports routes, each change of them costs a re-read."""
        if self._expected_counts is None or self.actual is None:
            return True
        return await self._path_counts() != self._expected_counts

    async def _path_counts(self) -> dict[int, int]:
        return {4: await self.client.path_count(4), 6: await self.client.path_count(6)}

    def _counted(self, version: int, delta: int) -> None:
        if self._expected_counts is not None:
            self._expected_counts[version] += delta

    def invalidate(self) -> None:
        """Forget what gobgpd holds; the next pass re-reads it."""
        self.actual = None
        self._expected_counts = None

    async def read_actual(self) -> dict[IPNetwork, Route]:
        counts = await self._path_counts()  # before listing: a change made during the listing shows up later
        routes = [*await self.client.list_owned_paths(4), *await self.client.list_owned_paths(6)]
        self.stats.full_reads += 1
        self._expected_counts = counts
        return {route.prefix: route for route in routes}

    def compute(self, endpoints: Iterable[Endpoint], actual: dict[IPNetwork, Route]) -> tuple[Desired, Plan]:
        if self.frozen:
            return Desired(dict(actual), {}), Plan(keep=tuple(actual.values()))
        desired = with_docker(desired_routes(endpoints, self.config, self.host_addresses), self.extras,
                              self.docker_refused)
        return desired, plan(desired.routes, actual, self.config.max_prefixes, self.config.namespace_quota,
                             desired.owners, self.advertised)

    async def reconcile(self, endpoints: Iterable[Endpoint]) -> Plan:
        """One level-triggered pass: desired from ``endpoints``, diff against gobgpd, apply the difference."""
        started = time.perf_counter()
        try:
            if self.actual is None:
                self.actual = await self.read_actual()
            desired, p = self.compute(endpoints, self.actual)
            self.desired = desired
            self._report_refusals(desired, p)
            await self._apply(p, self.actual, desired)
            self.advertised = set(self.actual)
        except BaseException:
            self.stats.failures += 1
            self.invalidate()
            raise
        self.stats.passes += 1
        self.stats.added += len(p.add)
        self.stats.withdrawn += len(p.withdraw)
        self.stats.last_pass_at = time.time()
        self.stats.last_duration = time.perf_counter() - started
        return p

    async def _apply(self, p: Plan, actual: dict[IPNetwork, Route], desired: Desired) -> None:
        """Withdraw first, then add; ``actual`` follows each step that gobgpd confirmed."""
        if p.withdraw:
            await self.client.delete_paths(p.withdraw)
            for route in p.withdraw:
                if actual.pop(route.prefix, None) is not None:
                    self._counted(route.version, -1)
            _log_routes("withdrew", p.withdraw, desired)
        if p.add:
            await self.client.add_paths(p.add)
            for route in p.add:
                if route.prefix not in actual:  # a re-add with new attributes replaces: the count stays
                    self._counted(route.version, +1)
                actual[route.prefix] = route
            _log_routes("advertised", p.add, desired)

    def _report_refusals(self, desired: Desired, p: Plan) -> None:
        """One log line per prefix and episode of refusal, with the reason."""
        why = {
            Refusal.OUTSIDE: "outside every configured network",
            Refusal.EXCLUDED: "in an `exclude` prefix of its network",
            Refusal.HOST_ADDRESS: "an address of this host (or a configured next hop)",
            Refusal.DUPLICATE: "claimed from more than one namespace, advertised for none until unique",
            Refusal.NOT_ASSIGNED_BY_DOCKER: "inside a Docker network, not assigned by Docker to that endpoint",
            Refusal.OPTED_OUT: "its container opted out (label ipvlan-bgp.advertise)",
        }
        now: dict[Refusal, set[IPNetwork]] = {reason: set(desired.refused_for(reason)) for reason in why}
        now[Refusal.QUOTA] = {r.prefix for r in p.over_quota}
        now[Refusal.CAP] = {r.prefix for r in p.over_cap}
        for reason, prefixes in now.items():
            for prefix in sorted(prefixes - self.stats.refused.get(reason, set()), key=lambda n: (n.version, n)):
                sources = desired.refused.get(prefix, (reason, desired.sources.get(prefix, ())))[1]
                text = why.get(reason) or (f"max_prefixes_per_namespace ({self.config.namespace_quota}) reached"
                                           if reason == Refusal.QUOTA else
                                           f"max_prefixes ({self.config.max_prefixes}) reached")
                level = logging.WARNING if reason in why else logging.ERROR
                log.log(level, "refused %s%s: %s", prefix, f" from {', '.join(sources)}" if sources else "", text,
                        extra={"prefix": str(prefix), "reason": reason.value, **source_fields(sources)})
        self.stats.refused = now
        self.stats.refused_outside = now[Refusal.OUTSIDE]
        self.stats.refused_cap = now[Refusal.CAP]

    async def withdraw_all(self) -> int:
        """Remove every path we own from gobgpd (on_shutdown = "withdraw"): those we know we hold, or, if
        that is unknown, those a full read finds."""
        owned = list((self.actual if self.actual is not None else await self.read_actual()).values())
        await self.client.delete_paths(owned)
        self.invalidate()
        return len(owned)
