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
from .routes import Desired, DesiredIndex, Plan, Refusal, desired_routes, plan, plan_changes, plan_quota_changes

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
    refused_outside: frozenset[IPNetwork] = frozenset()
    refused_cap: frozenset[IPNetwork] = frozenset()
    refused: dict[Refusal, frozenset[IPNetwork]] = field(default_factory=dict)  # every reason, outside and cap too
    planned_by_changes: int = 0  # passes planned from the changed prefixes alone (the rest: whole-table plans)
    early_pushes: int = 0  # adds-only pushes at start, while namespaces were still being read


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
        self._index: DesiredIndex | None = None
        self.prefix_counts: dict[tuple[str, str], int] = {}  # (host|aggregate, ipv4|ipv6) -> ours in gobgpd
        # gobgpd holds exactly the index's routes as of the last pass, so the next plan may look at the
        # prefixes that changed since and nothing else.
        self._exact = False
        self._over_quota: dict[str, frozenset[IPNetwork]] = {}  # namespace -> host routes its quota refused
        # Graceful drain (agent/drain.py), set by the owner: every path with GRACEFUL_SHUTDOWN; withdrawn: none.
        self.drained = False
        self.withdrawn = False
        self.local_as: int | None = None  # gobgpd's AS (set by the owner): drain.as_path_prepend repeats it

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
        self._exact = False

    def _current_index(self) -> DesiredIndex:
        """The index for the current config and host addresses; a new one (and a whole-table plan) when
        either changed."""
        index = self._index
        prepend = self._prepend()
        if index is None or index.config is not self.config or index.host_addresses != self.host_addresses \
                or index.drained != self.drained or index.prepend != prepend:
            index = self._index = DesiredIndex(self.config, self.host_addresses, self.drained, prepend)
            self._exact = False
        return index

    def _prepend(self) -> tuple[int, ...]:
        times = self.config.drain.as_path_prepend
        return (self.local_as,) * times if self.drained and times and self.local_as else ()

    async def read_actual(self) -> dict[IPNetwork, Route]:
        counts = await self._path_counts()  # before listing: a change made during the listing shows up later
        routes = [*await self.client.list_owned_paths(4), *await self.client.list_owned_paths(6)]
        self.stats.full_reads += 1
        self._expected_counts = counts
        self.prefix_counts = {}
        for route in routes:
            self._count_prefix(route.prefix, +1)
        return {route.prefix: route for route in routes}

    def _count_prefix(self, prefix: IPNetwork, delta: int) -> None:
        key = ("host" if prefix.prefixlen == prefix.max_prefixlen else "aggregate", f"ipv{prefix.version}")
        self.prefix_counts[key] = self.prefix_counts.get(key, 0) + delta

    def compute(self, endpoints: Iterable[Endpoint], actual: dict[IPNetwork, Route]) -> tuple[Desired, Plan]:
        if self.frozen:
            return Desired(dict(actual), {}), Plan(keep=tuple(actual.values()))
        desired = with_docker(desired_routes(endpoints, self.config, self.host_addresses, self.drained,
                                             self._prepend()), self.extras, self.docker_refused)
        wanted: Mapping[IPNetwork, Route] = {} if self.withdrawn else desired.routes
        return desired, plan(wanted, actual, self.config.max_prefixes, self.config.namespace_quota,
                             desired.owners, self.advertised)

    async def reconcile(self, by_namespace: Mapping[str, tuple[Endpoint, ...]], adds_only: bool = False) -> Plan:
        """One level-triggered pass: desired from the endpoints of every namespace, diffed against gobgpd, the
        difference applied. While gobgpd is known to hold exactly what we want and no cap binds, only the
        prefixes that changed are looked at; otherwise the whole table is planned.

        ``adds_only``: at start, while some namespaces are still being read, push what the ones read so far
        want and withdraw nothing (a restart must never withdraw what it has not looked at yet); refusals are
        reported by the first whole pass, and the pass is not counted in ``stats.passes``."""
        if adds_only:
            return await self._push_early(by_namespace)
        started = time.perf_counter()
        try:
            if self.actual is None:
                self.actual = await self.read_actual()
                self._exact = False
            index = self._current_index()
            touched = index.update(by_namespace)
            # With Docker's labels or refusals in play the routes are the index's, amended: planned whole.
            docker = bool(self.extras or self.docker_refused)
            fits = index.within_caps or index.global_cap_not_binding
            by_changes = self._exact and fits and not self.withdrawn and not docker
            desired = with_docker(index.view(), self.extras, self.docker_refused) if docker else index.view()
            if self.frozen:  # Docker has not answered yet: hold what gobgpd has
                p = Plan(keep=tuple(self.actual.values()))
            elif by_changes and index.within_caps and not self._over_quota:
                p = plan_changes(index.routes, self.actual, touched)
                self.stats.planned_by_changes += 1
            elif by_changes and index.global_cap_not_binding:
                held = self.advertised.union(self.actual)
                p, self._over_quota = plan_quota_changes(index, self.actual, touched, held, self._over_quota)
                self.stats.planned_by_changes += 1
            else:
                wanted: Mapping[IPNetwork, Route] = {} if self.withdrawn else desired.routes
                p = plan(wanted, self.actual, self.config.max_prefixes, self.config.namespace_quota,
                         index.owners, self.advertised)
                self._over_quota = _by_owner(p.over_quota, index.owners)
            self.desired = desired
            self._report_refusals(index, p, frozenset().union(*self._over_quota.values()))
            await self._apply(p, self.actual, desired)
            if not by_changes:
                self.advertised = set(self.actual)
            self._exact = fits and not self.withdrawn and not docker and not self.frozen
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

    async def _push_early(self, by_namespace: Mapping[str, tuple[Endpoint, ...]]) -> Plan:
        if self.withdrawn or self.frozen or self.extras or self.docker_refused:
            return Plan()  # drained to nothing, or Docker decides: the first whole pass does it
        try:
            if self.actual is None:
                self.actual = await self.read_actual()
            index = self._current_index()
            touched = index.update(by_namespace)
            self._exact = False  # what is withdrawn here is not: the first whole pass plans the whole table
            if index.within_caps:
                p = plan_changes(index.routes, self.actual, touched)
            else:
                p = plan(index.routes, self.actual, self.config.max_prefixes, self.config.namespace_quota,
                         index.owners, self.advertised)
            p = Plan(add=p.add)
            self.desired = index.view()
            await self._apply(p, self.actual, self.desired)
        except BaseException:
            self.invalidate()
            raise
        self.stats.early_pushes += 1
        self.stats.added += len(p.add)
        return p

    async def _apply(self, p: Plan, actual: dict[IPNetwork, Route], desired: Desired) -> None:
        """Withdraw first, then add; ``actual`` follows each step that gobgpd confirmed."""
        if p.withdraw:
            await self.client.delete_paths(p.withdraw)
            for route in p.withdraw:
                if actual.pop(route.prefix, None) is not None:
                    self._counted(route.version, -1)
                    self._count_prefix(route.prefix, -1)
                self.advertised.discard(route.prefix)
            _log_routes("withdrew", p.withdraw, desired)
        if p.add:
            await self.client.add_paths(p.add)
            for route in p.add:
                if route.prefix not in actual:  # a re-add with new attributes replaces: the count stays
                    self._counted(route.version, +1)
                    self._count_prefix(route.prefix, +1)
                actual[route.prefix] = route
                self.advertised.add(route.prefix)
            _log_routes("advertised", p.add, desired)

    def _report_refusals(self, index: DesiredIndex, p: Plan, over_quota: frozenset[IPNetwork]) -> None:
        """One log line per prefix and episode of refusal, with the reason."""
        why = {
            Refusal.OUTSIDE: "outside every configured network",
            Refusal.EXCLUDED: "in an `exclude` prefix of its network",
            Refusal.HOST_ADDRESS: "an address of this host (or a configured next hop)",
            Refusal.DUPLICATE: "claimed from more than one namespace (not an anycast network), advertised for none "
                               "until unique",
            Refusal.NOT_ASSIGNED_BY_DOCKER: "inside a Docker network, not assigned by Docker to that endpoint",
            Refusal.OPTED_OUT: "its container opted out (label ipvlan-bgp.advertise)",
        }
        now: dict[Refusal, frozenset[IPNetwork]] = {reason: frozenset(index.refused_by_reason[reason])
                                                    for reason in why}
        for prefix, (reason, _) in self.docker_refused.items():
            now[reason] = now[reason] | {prefix}
        now[Refusal.QUOTA] = over_quota
        now[Refusal.CAP] = frozenset(r.prefix for r in p.over_cap)
        for reason, prefixes in now.items():
            new = prefixes - self.stats.refused.get(reason, frozenset())
            if not new:
                continue
            text = why.get(reason) or (f"max_prefixes_per_namespace ({self.config.namespace_quota}) reached"
                                       if reason == Refusal.QUOTA else
                                       f"max_prefixes ({self.config.max_prefixes}) reached")
            level = logging.WARNING if reason in why else logging.ERROR
            if len(new) > LOG_EACH_UP_TO:  # a flood (a container adding 50,000 addresses) is one line
                log.log(level, "refused %d prefix(es): %s (each at debug level; `ipvlan-bgp routes` lists them)",
                        len(new), text, extra={"count": len(new), "reason": reason.value})
                level = logging.DEBUG
                if not log.isEnabledFor(level):
                    continue
            for prefix in sorted(new, key=lambda n: (n.version, n)):
                sources = (self.docker_refused.get(prefix) or index.refused.get(prefix)
                           or (reason, index.sources.get(prefix, ())))[1]
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


def _by_owner(routes: Iterable[Route], owners: Mapping[IPNetwork, str]) -> dict[str, frozenset[IPNetwork]]:
    grouped: dict[str, set[IPNetwork]] = {}
    for route in routes:
        grouped.setdefault(owners.get(route.prefix, ""), set()).add(route.prefix)
    return {namespace: frozenset(found) for namespace, found in grouped.items()}
