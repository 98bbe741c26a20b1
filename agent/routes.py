"""The pure middle: endpoints -> desired routes -> plan against what gobgpd holds. No I/O here.

``desired_routes`` applies the allow-list (only addresses inside a configured network are advertised)
and the per-network advertise mode; ``plan`` diffs desired against actual and enforces the
max-prefix cap without ever withdrawing a path that should stay.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .config import Advertise, AgentConfig, AggregateWhen
from .endpoints import Endpoint
from .model import IPNetwork, Route


@dataclass(frozen=True)
class Desired:
    routes: dict[IPNetwork, Route]
    sources: dict[IPNetwork, tuple[str, ...]]  # prefix -> endpoint labels (or the network's label)
    outside: dict[IPNetwork, tuple[str, ...]] = field(default_factory=dict)  # refused by the allow-list


def _host_prefix(address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> IPNetwork:
    return ipaddress.ip_network(address.ip)  # /32 or /128


def desired_routes(endpoints: Iterable[Endpoint], config: AgentConfig) -> Desired:
    routes: dict[IPNetwork, Route] = {}
    sources: dict[IPNetwork, list[str]] = {}
    outside: dict[IPNetwork, list[str]] = {}
    owner = config.ownership_community
    used: set[IPNetwork] = set()
    for endpoint in endpoints:
        if not endpoint.ready:
            continue
        for address in endpoint.addresses:
            host = _host_prefix(address)
            network = config.network_for(address.ip)
            if network is None:
                outside.setdefault(host, []).append(endpoint.label)
                continue
            used.add(network.prefix)
            if network.advertise in (Advertise.HOST, Advertise.BOTH):
                routes[host] = Route(host, config.next_hop.for_version(host.version), network.attributes(owner))
                sources.setdefault(host, []).append(endpoint.label)
    for network in config.networks:
        if network.advertise == Advertise.HOST:
            continue
        if network.aggregate_when == AggregateWhen.ALWAYS or network.prefix in used:
            prefix = network.prefix
            routes[prefix] = Route(prefix, config.next_hop.for_version(prefix.version), network.attributes(owner))
            sources.setdefault(prefix, []).append(f"network {network.label}")
    return Desired(
        routes=routes,
        sources={p: tuple(sorted(set(s))) for p, s in sources.items()},
        outside={p: tuple(sorted(set(s))) for p, s in outside.items()},
    )


@dataclass(frozen=True)
class Plan:
    add: tuple[Route, ...] = ()  # new prefixes, and prefixes whose attributes change (re-add replaces)
    withdraw: tuple[Route, ...] = ()
    keep: tuple[Route, ...] = ()
    over_cap: tuple[Route, ...] = ()  # desired but refused by max_prefixes

    @property
    def empty(self) -> bool:
        return not self.add and not self.withdraw


def _ordered(routes: Iterable[Route]) -> list[Route]:
    # Aggregates before host routes, so a cap keeps the coarse routes that cover the most containers.
    return sorted(routes, key=lambda r: (r.prefix.prefixlen == r.prefix.max_prefixlen, r.sort_key))


def plan(desired: Mapping[IPNetwork, Route], actual: Mapping[IPNetwork, Route], max_prefixes: int) -> Plan:
    """What to send so that gobgpd holds ``desired`` (capped at ``max_prefixes``) and nothing else we own.

    Paths already in gobgpd keep their place under the cap; new prefixes fill what is left.
    """
    keep = [route for prefix, route in actual.items() if desired.get(prefix) == route]
    changed = [route for prefix, route in desired.items() if prefix in actual and actual[prefix] != route]
    new = [route for prefix, route in desired.items() if prefix not in actual]
    withdraw = [route for prefix, route in actual.items() if prefix not in desired]

    present = _ordered(keep + changed)
    over_cap: list[Route] = []
    if len(present) > max_prefixes:  # the cap was lowered under what we already hold
        over_cap = present[max_prefixes:]
        withdraw += [actual[r.prefix] for r in over_cap]
        present = present[:max_prefixes]
        new_allowed: list[Route] = []
        over_cap += new
    else:
        room = max_prefixes - len(present)
        ordered_new = _ordered(new)
        new_allowed, over_cap = ordered_new[:room], ordered_new[room:]
    kept = {r.prefix for r in present}
    return Plan(
        add=tuple(_ordered([r for r in changed if r.prefix in kept] + new_allowed)),
        withdraw=tuple(_ordered(withdraw)),
        keep=tuple(_ordered(r for r in keep if r.prefix in kept)),
        over_cap=tuple(_ordered(over_cap)),
    )


def apply_plan(actual: Mapping[IPNetwork, Route], p: Plan) -> dict[IPNetwork, Route]:
    """The state gobgpd is in after ``p`` has been applied in full."""
    after = dict(actual)
    for route in p.withdraw:
        after.pop(route.prefix, None)
    for route in p.add:
        after[route.prefix] = route
    return after
