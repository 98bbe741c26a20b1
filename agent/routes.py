"""The pure middle: endpoints -> desired routes -> plan against what gobgpd holds. No I/O here.

``desired_routes`` applies the allow-list (only addresses inside a configured network and outside its
``exclude`` prefixes are advertised), address ownership (never an address of the host itself; never an
address claimed from two namespaces) and the per-network advertise mode; ``plan`` diffs desired against
actual and enforces the caps with the fair policy documented on ``allocate``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .config import Advertise, AgentConfig, AggregateWhen
from .endpoints import Endpoint
from .model import IPAddress, IPNetwork, Route


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
    routes: dict[IPNetwork, Route]
    sources: dict[IPNetwork, tuple[str, ...]]  # prefix -> endpoint labels (or the network's label)
    refused: dict[IPNetwork, tuple[Refusal, tuple[str, ...]]] = field(default_factory=dict)  # -> (why, who)
    owners: dict[IPNetwork, str] = field(default_factory=dict)  # host prefix -> the namespace it comes from

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


def desired_routes(endpoints: Iterable[Endpoint], config: AgentConfig,
                   host_addresses: Collection[IPAddress] = ()) -> Desired:
    """``host_addresses``: every address of the host's own interfaces (discovery's own namespace); they and
    the configured next hops are never advertised from an endpoint."""
    routes: dict[IPNetwork, Route] = {}
    sources: dict[IPNetwork, list[str]] = {}
    refused: dict[IPNetwork, tuple[Refusal, list[str]]] = {}
    claims: dict[IPNetwork, dict[str, list[str]]] = {}  # host prefix -> namespace -> endpoint labels
    attributes = {network.prefix: network.attributes(config.ownership_community) for network in config.networks}
    next_hop = {4: config.next_hop.for_version(4), 6: config.next_hop.for_version(6)}
    own = {*host_addresses, *(hop for hop in next_hop.values() if hop is not None)}
    for endpoint in endpoints:
        if not endpoint.ready:
            continue
        for address in endpoint.addresses:
            host = _host_prefix(address)
            network = config.network_for(address.ip)
            reason = Refusal.OUTSIDE if network is None else Refusal.EXCLUDED if network.excludes(address.ip) \
                else Refusal.HOST_ADDRESS if address.ip in own else None
            if reason is not None:
                refused.setdefault(host, (reason, []))[1].append(endpoint.label)
            else:
                claims.setdefault(host, {}).setdefault(endpoint.netns, []).append(endpoint.label)
    used: set[IPNetwork] = set()
    owners: dict[IPNetwork, str] = {}
    for host, by_namespace in claims.items():
        labels = [label for found in by_namespace.values() for label in found]
        if len(by_namespace) > 1:
            refused[host] = (Refusal.DUPLICATE, labels)
            continue
        network = config.network_for(host.network_address)
        assert network is not None  # claims are inside a network
        used.add(network.prefix)
        if network.advertise in (Advertise.HOST, Advertise.BOTH):
            routes[host] = Route(host, next_hop[host.version], attributes[network.prefix])
            sources[host] = labels
            (owners[host],) = by_namespace
    for network in config.networks:
        if network.advertise == Advertise.HOST:
            continue
        if network.aggregate_when == AggregateWhen.ALWAYS or network.prefix in used:
            prefix = network.prefix
            routes[prefix] = Route(prefix, next_hop[prefix.version], attributes[prefix])
            sources.setdefault(prefix, []).append(f"network {network.label}")
    return Desired(
        routes=routes,
        sources={p: tuple(sorted(set(s))) for p, s in sources.items()},
        refused={p: (why, tuple(sorted(set(s)))) for p, (why, s) in refused.items()},
        owners=owners,
    )


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

