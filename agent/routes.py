"""The pure middle: endpoints -> desired routes -> plan against what gobgpd holds. No I/O here.

``desired_routes`` applies the allow-list (only addresses inside a configured network and outside its
``exclude`` prefixes are advertised), address ownership (never an address of the host itself; never an
address claimed from two namespaces, unless its network is ``anycast``) and the per-network advertise mode;
``plan`` diffs desired against actual and enforces the caps with the fair policy documented on ``allocate``.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from .config import Advertise, AgentConfig, AggregateWhen
from .drain import drained_attributes
from .endpoints import Endpoint
from .model import IPAddress, IPNetwork, Route
from .netlink_types import IPInterface


class Refusal(StrEnum):
    """Why a wanted prefix is not advertised (the ``reason`` label of the refusal metrics)."""

    OUTSIDE = "outside_networks"  # in no configured network
    EXCLUDED = "excluded"  # inside a network's `exclude` prefixes
    HOST_ADDRESS = "host_address"  # an address of the host itself (or a configured next hop)
    DUPLICATE = "duplicate"  # claimed from two namespaces: advertised for neither until it is unique
    QUOTA = "namespace_quota"  # past max_prefixes_per_namespace
    CAP = "max_prefixes"  # past the global cap
    NOT_ASSIGNED_BY_DOCKER = "not_assigned_by_docker"  # [docker]: Docker did not give it to that endpoint
    OPTED_OUT = "opted_out"  # [docker]: its container's label ipvlan-bgp.advertise=false


@dataclass(frozen=True)
class Desired:
    routes: Mapping[IPNetwork, Route]
    sources: Mapping[IPNetwork, tuple[str, ...]]  # prefix -> endpoint labels (or the network's label)
    refused: Mapping[IPNetwork, tuple[Refusal, tuple[str, ...]]] = field(default_factory=dict)  # -> (why, who)
    owners: Mapping[IPNetwork, str] = field(default_factory=dict)  # host prefix -> the namespace it comes from
    # (anycast, several: the first by name)

    @property
    def outside(self) -> dict[IPNetwork, tuple[str, ...]]:
        return self.refused_for(Refusal.OUTSIDE)

    def refused_for(self, reason: Refusal) -> dict[IPNetwork, tuple[str, ...]]:
        return {prefix: who for prefix, (why, who) in self.refused.items() if why == reason}


def _host_prefix(address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> IPNetwork:
    # /32 or /128. From the integer: ip_network(address.ip) formats and re-parses a string, 2.5x slower.
    if address.version == 4:
        return ipaddress.IPv4Network((int(address.ip), 32))
    return ipaddress.IPv6Network((int(address.ip), 128))


class DesiredIndex:
    """The desired routes, kept up to date endpoint by endpoint: ``update`` re-derives only the endpoints that
    are not the very objects it saw last time (discovery hands out the same objects while nothing changed) and
    returns the prefixes whose outcome may have changed, so a pass costs what changed, not what exists.

    The rules: an address is advertised as a host route (per its network's ``advertise``) when it is inside a
    configured network, outside that network's ``exclude`` prefixes, not an address of the host itself (nor a
    configured next hop), and held from one namespace only, or from any number in an ``anycast`` network (one
    route then, its sources every holder, counted under the quota of the first namespace by name). A
    network's aggregate is advertised when its ``aggregate_when`` says so. ``desired_routes`` is the same index
    built from scratch."""

    def __init__(self, config: AgentConfig, host_addresses: Collection[IPAddress] = (), drained: bool = False,
                 prepend: tuple[int, ...] = ()) -> None:
        self.config = config
        self.host_addresses = frozenset(host_addresses)
        self.drained = drained  # every route carries GRACEFUL_SHUTDOWN (agent/drain.py)
        self.prepend = prepend  # and, drained, this AS_PATH
        self._attributes = {network.prefix: network.attributes(config.ownership_community)
                            for network in config.networks}
        if drained:
            self._attributes = {prefix: drained_attributes(a, prepend) for prefix, a in self._attributes.items()}
        self._next_hop = {4: config.next_hop.for_version(4), 6: config.next_hop.for_version(6)}
        self._own = {*self.host_addresses, *(hop for hop in self._next_hop.values() if hop is not None)}
        self._networks = {network.prefix: network for network in config.networks}
        self._anycast = {network.prefix for network in config.networks if network.anycast}
        self._seen: dict[str, tuple[tuple[Endpoint, ...], dict[tuple[str, int], Endpoint]]] = {}
        self._holders: dict[IPNetwork, dict[str, list[str]]] = {}  # host prefix -> namespace -> endpoint labels
        self._verdict: dict[IPNetwork, tuple[IPNetwork | None, Refusal | None]] = {}  # -> (network, reason)
        self._accepted: dict[IPNetwork, IPNetwork] = {}  # host prefix -> its network, while a unique claim
        self._used: dict[IPNetwork, int] = {}  # network -> accepted host prefixes in it
        self._touched: set[IPNetwork] = set()
        self.routes: dict[IPNetwork, Route] = {}
        self.sources: dict[IPNetwork, tuple[str, ...]] = {}
        self.refused: dict[IPNetwork, tuple[Refusal, tuple[str, ...]]] = {}
        self.refused_by_reason: dict[Refusal, set[IPNetwork]] = {reason: set() for reason in Refusal}
        self.owners: dict[IPNetwork, str] = {}
        self.owned: dict[str, set[IPNetwork]] = {}  # namespace -> the host routes it owns
        self.recounted: set[str] = set()  # namespaces whose host routes changed in the last update
        self.namespaces_over_quota = 0  # namespaces owning more host routes than max_prefixes_per_namespace
        self._within_quota = 0  # the sum over namespaces of min(host routes, max_prefixes_per_namespace)
        # A network as narrow as one address makes a host-length route without an owner (its aggregate),
        # which ``allocate`` puts under the quota of namespace "": then only whole-table plans are exact.
        self._host_length_network = any(n.prefix.prefixlen == n.prefix.max_prefixlen for n in config.networks)
        for network in config.networks:
            self._settle_aggregate(network.prefix)
        self._touched.clear()

    def update(self, by_namespace: Mapping[str, tuple[Endpoint, ...]]) -> set[IPNetwork]:
        """Take the endpoints of every namespace (all of them: a namespace missing here is gone); returns the
        prefixes whose route, refusal or owner may have changed since the last update."""
        for netns in [n for n in self._seen if n not in by_namespace]:
            for endpoint in self._seen.pop(netns)[1].values():
                self._hold(endpoint, -1)
        for netns, endpoints in by_namespace.items():
            seen = self._seen.get(netns)
            if seen is not None and seen[0] is endpoints:
                continue
            old = seen[1] if seen is not None else {}
            new = {endpoint.key: endpoint for endpoint in endpoints}
            for key, endpoint in old.items():
                now = new.get(key)
                if now is None:
                    self._hold(endpoint, -1)
                elif now is not endpoint:
                    self._rehold(endpoint, now)
            for key, endpoint in new.items():
                if key not in old:
                    self._hold(endpoint, +1)
            self._seen[netns] = (endpoints, new)
        touched, self._touched = self._touched, set()
        self.recounted = set()
        networks = set()
        for prefix in touched:
            network = self._settle_host(prefix)
            if network is not None:
                networks.add(network)
        for network in networks:
            self._settle_aggregate(network)
            touched.add(network)
        return touched

    def desired(self) -> Desired:
        """A copy of the current outcome."""
        return Desired(routes=dict(self.routes), sources=dict(self.sources), refused=dict(self.refused),
                       owners=dict(self.owners))

    def view(self) -> Desired:
        """The current outcome as read-only views that follow later updates (no copy: a pass at 10,000 routes
        would spend more copying than deciding)."""
        return Desired(routes=MappingProxyType(self.routes), sources=MappingProxyType(self.sources),
                       refused=MappingProxyType(self.refused), owners=MappingProxyType(self.owners))

    def _rehold(self, before: Endpoint, after: Endpoint) -> None:
        """The same link, changed: only the addresses that came or went, when that is all that changed."""
        if before.ready and after.ready and before.label == after.label:
            was, now = before.address_set, after.address_set
            self._hold(before, -1, was - now)
            self._hold(after, +1, now - was)
        else:
            self._hold(before, -1)
            self._hold(after, +1)

    def _hold(self, endpoint: Endpoint, delta: int, addresses: Iterable[IPInterface] | None = None) -> None:
        if not endpoint.ready:
            return
        for address in endpoint.address_set if addresses is None else addresses:
            prefix = _host_prefix(address)
            by_namespace = self._holders.setdefault(prefix, {})
            labels = by_namespace.setdefault(endpoint.netns, [])
            if delta > 0:
                labels.append(endpoint.label)
            else:
                labels.remove(endpoint.label)
                if not labels:
                    del by_namespace[endpoint.netns]
            self._touched.add(prefix)

    def _judge(self, prefix: IPNetwork) -> tuple[IPNetwork | None, Refusal | None]:
        verdict = self._verdict.get(prefix)
        if verdict is None:
            address = prefix.network_address
            network = self.config.network_for(address)
            reason = Refusal.OUTSIDE if network is None else Refusal.EXCLUDED if network.excludes(address) \
                else Refusal.HOST_ADDRESS if address in self._own else None
            verdict = self._verdict[prefix] = (None if network is None else network.prefix, reason)
        return verdict

    def _forget_host(self, prefix: IPNetwork) -> IPNetwork | None:
        """Undo what ``prefix`` contributed as a host prefix; returns its network if that lost a claim."""
        refusal = self.refused.pop(prefix, None)
        if refusal is not None:
            self.refused_by_reason[refusal[0]].discard(prefix)
        owner = self.owners.pop(prefix, None)
        if owner is not None:
            self._set_owner(owner, prefix, -1)
            del self.routes[prefix]
            del self.sources[prefix]
        network = self._accepted.pop(prefix, None)
        if network is None:
            return None
        self._used[network] -= 1
        return network if self._used[network] == 0 else None

    def _settle_host(self, prefix: IPNetwork) -> IPNetwork | None:
        """Re-decide one host prefix; returns a network whose aggregate may have to follow."""
        changed_network = self._forget_host(prefix)
        by_namespace = self._holders.get(prefix)
        if not by_namespace:
            self._holders.pop(prefix, None)
            self._verdict.pop(prefix, None)
            return changed_network if changed_network is not None else self._network_prefix_itself(prefix)
        labels = tuple(sorted({label for found in by_namespace.values() for label in found}))
        network_prefix, reason = self._judge(prefix)
        if reason is None and len(by_namespace) > 1 and network_prefix not in self._anycast:
            reason = Refusal.DUPLICATE
        if reason is not None:
            self.refused[prefix] = (reason, labels)
            self.refused_by_reason[reason].add(prefix)
            return changed_network if changed_network is not None else self._network_prefix_itself(prefix)
        assert network_prefix is not None  # no refusal: inside a network
        self._accepted[prefix] = network_prefix
        self._used[network_prefix] = self._used.get(network_prefix, 0) + 1
        network = self._networks[network_prefix]
        if network.advertise in (Advertise.HOST, Advertise.BOTH):
            owner = min(by_namespace)  # one holder, or (anycast) several: the first by name counts it
            self.routes[prefix] = Route(prefix, self._next_hop[prefix.version], self._attributes[network_prefix])
            self.sources[prefix] = labels
            self.owners[prefix] = owner
            self._set_owner(owner, prefix, +1)
        if self._used[network_prefix] == 1 or prefix in self._networks:
            return network_prefix
        return changed_network

    def _network_prefix_itself(self, prefix: IPNetwork) -> IPNetwork | None:
        # A network as narrow as one address: its aggregate and its host route share the prefix.
        return prefix if prefix in self._networks else None

    def _settle_aggregate(self, prefix: IPNetwork) -> None:
        network = self._networks[prefix]
        if network.advertise == Advertise.HOST:
            return
        wanted = network.aggregate_when == AggregateWhen.ALWAYS or self._used.get(prefix, 0) > 0
        label = f"network {network.label}"
        if prefix in self.owners:  # the host route of a one-address network: the same route, two sources
            self.sources[prefix] = tuple(sorted({*self.sources[prefix], label}))
        elif wanted:
            self.routes[prefix] = Route(prefix, self._next_hop[prefix.version], self._attributes[prefix])
            self.sources[prefix] = (label,)
        else:
            self.routes.pop(prefix, None)
            self.sources.pop(prefix, None)

    def _set_owner(self, namespace: str, prefix: IPNetwork, delta: int) -> None:
        owned = self.owned.setdefault(namespace, set())
        before = len(owned)
        if delta > 0:
            owned.add(prefix)
        else:
            owned.discard(prefix)
            if not owned:
                del self.owned[namespace]
        after = before + delta
        self.recounted.add(namespace)
        quota = self.config.namespace_quota
        if quota is None:
            self._within_quota += delta
            return
        self._within_quota += min(after, quota) - min(before, quota)
        if (before > quota) != (after > quota):
            self.namespaces_over_quota += 1 if after > quota else -1

    @property
    def within_caps(self) -> bool:
        """No cap binds: every desired route is advertised (``plan_changes`` may then be used)."""
        return len(self.routes) <= self.config.max_prefixes and not self.namespaces_over_quota

    @property
    def global_cap_not_binding(self) -> bool:
        """The global cap does not bind, whatever the per-namespace quota does: ``allocate`` then gives every
        namespace its host routes cut at its quota (``plan_quota_changes`` may be used)."""
        aggregates = len(self.routes) - len(self.owners)
        return not self._host_length_network and aggregates + self._within_quota <= self.config.max_prefixes

    def over_quota(self, namespace: str) -> bool:
        quota = self.config.namespace_quota
        return quota is not None and len(self.owned.get(namespace, ())) > quota


def group_by_namespace(endpoints: Iterable[Endpoint]) -> dict[str, tuple[Endpoint, ...]]:
    grouped: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        grouped.setdefault(endpoint.netns, []).append(endpoint)
    return {netns: tuple(found) for netns, found in grouped.items()}


def desired_routes(endpoints: Iterable[Endpoint], config: AgentConfig,
                   host_addresses: Collection[IPAddress] = (), drained: bool = False,
                   prepend: tuple[int, ...] = ()) -> Desired:
    """``host_addresses``: every address of the host's own interfaces (discovery's own namespace); they and
    the configured next hops are never advertised from an endpoint."""
    index = DesiredIndex(config, host_addresses, drained, prepend)
    index.update(group_by_namespace(endpoints))
    return index.desired()


@dataclass(frozen=True)
class Plan:
    add: tuple[Route, ...] = ()  # new prefixes, and prefixes whose attributes change (re-add replaces)
    withdraw: tuple[Route, ...] = ()
    keep: tuple[Route, ...] = ()  # in no particular order
    over_cap: tuple[Route, ...] = ()  # desired but refused by max_prefixes
    over_quota: tuple[Route, ...] = ()  # desired but refused by max_prefixes_per_namespace

    @property
    def empty(self) -> bool:
        return not self.add and not self.withdraw


def _ordered(routes: Iterable[Route]) -> list[Route]:
    # Aggregates before host routes, so a cap keeps the coarse routes that cover the most containers.
    return sorted(routes, key=lambda r: (r.prefix.prefixlen == r.prefix.max_prefixlen, r.sort_key))


def _is_host(prefix: IPNetwork) -> bool:
    return prefix.prefixlen == prefix.max_prefixlen


def allocate(desired: Mapping[IPNetwork, Route], max_prefixes: int, quota: int | None = None,
             owners: Mapping[IPNetwork, str] | None = None, held: Collection[IPNetwork] = ()
             ) -> tuple[list[Route], list[Route], list[Route]]:
    """The fair cap: which desired routes are advertised; returns (chosen, over quota, over cap).

    1. Aggregates first (they cover the most containers), in prefix order, up to ``max_prefixes``.
    2. Each namespace's host routes (``owners``; a host route without an owner counts as namespace "") are
       cut at ``quota`` (None: no quota), those ``held`` (advertised now or before a gobgpd restart) first.
    3. The room left is shared by water-filling: every namespace gets min(its routes, L) for the largest
       level L that fits, then the slots left over go one each to the namespaces above L in name order.

    Guarantee (proved by a property test): a namespace holding n ≤ ``quota`` host routes is advertised in
    full whenever aggregates + Σ over namespaces j of min(n_j, quota, n) ≤ ``max_prefixes`` - whatever the
    other namespaces hold, and whatever gobgpd held before (an empty RIB after a restart included). In
    particular, if aggregates + Σ_j min(n_j, quota) ≤ max_prefixes, every namespace gets min(n_j, quota).
    The result depends on ``desired`` only, except which of one namespace's routes fill a partial share
    (those ``held`` first), so a restart of gobgpd or of the agent cannot reshuffle it."""
    owners = owners or {}
    held_set = set(held)
    aggregates = _ordered(r for r in desired.values() if not _is_host(r.prefix))
    chosen = aggregates[:max_prefixes]
    over_cap = aggregates[max_prefixes:]
    groups: dict[str, list[Route]] = {}
    for route in desired.values():
        if _is_host(route.prefix):
            groups.setdefault(owners.get(route.prefix, ""), []).append(route)
    over_quota: list[Route] = []
    for name, group in groups.items():
        group.sort(key=lambda r: (r.prefix not in held_set, r.sort_key))
        if quota is not None and len(group) > quota:
            over_quota += group[quota:]
            groups[name] = group[:quota]
    room = max_prefixes - len(chosen)
    sizes = sorted(len(g) for g in groups.values())
    level, used, remaining = 0, 0, len(sizes)
    for size in sizes:  # raise the level namespace by namespace, smallest first
        if used + (size - level) * remaining > room:
            break
        used += (size - level) * remaining
        level = size
        remaining -= 1
    if remaining:
        step = (room - used) // remaining
        level += step
        used += step * remaining
    extra = room - used
    for name in sorted(groups):
        group = groups[name]
        share = min(len(group), level)
        if share < len(group) and extra > 0:
            share, extra = share + 1, extra - 1
        chosen += group[:share]
        over_cap += group[share:]
    return chosen, over_quota, over_cap


def plan(desired: Mapping[IPNetwork, Route], actual: Mapping[IPNetwork, Route], max_prefixes: int,
         quota: int | None = None, owners: Mapping[IPNetwork, str] | None = None,
         previously: Collection[IPNetwork] = ()) -> Plan:
    """What to send so that gobgpd holds the ``allocate``d part of ``desired`` and nothing else we own.

    ``previously``: prefixes advertised before gobgpd lost them (a restart), kept in place like those held."""
    chosen, over_quota, over_cap = allocate(desired, max_prefixes, quota, owners, {*actual, *previously})
    keep: list[Route] = []
    add: list[Route] = []
    for route in chosen:
        if actual.get(route.prefix) == route:
            keep.append(route)
        else:
            add.append(route)
    wanted = {route.prefix for route in chosen}
    withdraw = [route for prefix, route in actual.items() if prefix not in wanted]
    return Plan(
        add=tuple(_ordered(add)),
        withdraw=tuple(_ordered(withdraw)),
        keep=tuple(keep),
        over_cap=tuple(_ordered(over_cap)),
        over_quota=tuple(_ordered(over_quota)),
    )



def plan_changes(desired: Mapping[IPNetwork, Route], actual: Mapping[IPNetwork, Route],
                 touched: Iterable[IPNetwork]) -> Plan:
    """``plan`` restricted to the ``touched`` prefixes, for when no cap binds (``DesiredIndex.within_caps``)
    and gobgpd held exactly the desired routes before they were touched: then every other prefix is kept
    as it is, and the plan costs what changed. ``keep`` is left empty (it would list everything else)."""
    add: list[Route] = []
    withdraw: list[Route] = []
    for prefix in touched:
        route = desired.get(prefix)
        held = actual.get(prefix)
        if route is not None and held != route:
            add.append(route)
        elif route is None and held is not None:
            withdraw.append(held)
    return Plan(add=tuple(_ordered(add)), withdraw=tuple(_ordered(withdraw)))


def _quota_cut(index: DesiredIndex, owned: Collection[IPNetwork], held: Collection[IPNetwork], quota: int
               ) -> set[IPNetwork]:
    """What ``allocate`` keeps of one namespace's host routes: those held first, then by prefix order."""
    def key(prefix: IPNetwork) -> tuple[bool, tuple[int, int, int]]:
        return (prefix not in held, index.routes[prefix].sort_key)
    return set(heapq.nsmallest(quota, owned, key=key))


def plan_quota_changes(index: DesiredIndex, actual: Mapping[IPNetwork, Route], touched: Iterable[IPNetwork],
                       held: Collection[IPNetwork], refused_before: Mapping[str, frozenset[IPNetwork]]
                       ) -> tuple[Plan, dict[str, frozenset[IPNetwork]]]:
    """``plan`` restricted to what changed, for when the global cap does not bind (``index.global_cap_not_binding``) and
    gobgpd held exactly the allocation before the change (``held``), while namespaces may be over their quota.

    ``refused_before``: the host routes each namespace had refused by its quota. A namespace within its quota
    now and before is planned by its touched prefixes, as ``plan_changes`` does. One over its quota keeps
    what it holds, its new routes join its refused ones, and a free place (a held route gone) goes to the
    first refused one by prefix order, as ``allocate`` decides: a pass costs what changed, not the size of a
    namespace flooding addresses. Returns the plan (``over_quota`` left empty: the refusals are the second
    value, by namespace, for the next call)."""
    quota = index.config.namespace_quota
    touched = set(touched)
    changed: dict[str, list[IPNetwork]] = {namespace: [] for namespace in index.recounted}
    for prefix in touched:
        owner = index.owners.get(prefix)
        if owner is not None:
            changed.setdefault(owner, []).append(prefix)
    hot = {namespace for namespace in changed if namespace in refused_before or index.over_quota(namespace)}
    refused = {namespace: found for namespace, found in refused_before.items() if namespace not in hot}
    add: list[Route] = []
    withdraw: list[Route] = []
    for prefix in touched:
        if index.owners.get(prefix) in hot:
            continue
        route, holding = index.routes.get(prefix), actual.get(prefix)
        if route is not None and holding != route:
            add.append(route)
        elif route is None and holding is not None:
            withdraw.append(holding)
    for namespace in hot:
        owned = index.owned.get(namespace, set())
        before = refused_before.get(namespace, frozenset())
        if quota is None or len(owned) <= quota:
            chosen: Collection[IPNetwork] = owned
        elif not before or not before.isdisjoint(held):
            chosen = _quota_cut(index, owned, held, quota)  # newly over its quota: the whole namespace, once
        else:
            mine = changed[namespace]
            newly = {p for p in mine if p not in before and p not in held}
            still = {p for p in before if index.owners.get(p) == namespace} if touched & before else before
            waiting = still | newly
            room = quota - (len(owned) - len(waiting))
            if room < 0:  # a held route moved in from another namespace: decide the namespace again
                chosen = _quota_cut(index, owned, held, quota)
            else:
                taken = set(heapq.nsmallest(room, waiting, key=lambda p: index.routes[p].sort_key))
                for prefix in (*taken, *(p for p in mine if p not in waiting)):
                    if actual.get(prefix) != index.routes[prefix]:
                        add.append(index.routes[prefix])
                if waiting - taken:
                    refused[namespace] = frozenset(waiting - taken)
                continue
        over: set[IPNetwork] = set()
        for prefix in owned:
            route, holding = index.routes[prefix], actual.get(prefix)
            if prefix not in chosen:
                over.add(prefix)
                if holding is not None:
                    withdraw.append(holding)
            elif holding != route:
                add.append(route)
        if over:
            refused[namespace] = frozenset(over)
    return Plan(add=tuple(_ordered(add)), withdraw=tuple(_ordered(withdraw))), refused
