"""The incremental pass against the whole-table one on random event sequences (issue #16): the DesiredIndex
against the whole-table desired_routes it replaced, and the Reconciler's plans-by-changes against a
whole-table plan of what gobgpd holds."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Advertise, AgentConfig, AggregateWhen, parse_config
from agent.drain import drained_attributes
from agent.endpoints import Endpoint, IpvlanMode
from agent.model import IPAddress, IPNetwork, LargeCommunity, Route
from agent.reconciler import Reconciler
from agent.routes import Desired, DesiredIndex, Refusal, _host_prefix, group_by_namespace, plan

from ..fakes import FakeGobgp

OWNER = LargeCommunity(65001, 4242, 1)
HOST = ipaddress.ip_address("10.1.0.250")


def config(narrow_network: bool = True, **extra: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "uplinks": ["eth0"], "ownership_community": str(OWNER),
        "networks": [{"prefix": "10.1.0.0/24", "advertise": "both", "exclude": ["10.1.0.128/30"]},
                     {"prefix": "10.2.0.0/24", "advertise": "aggregate"},
                     {"prefix": "10.3.0.0/24", "advertise": "host"},
                     {"prefix": "10.4.0.0/24", "advertise": "both", "aggregate_when": "always"},
                     {"prefix": "10.5.0.7/32", "advertise": "both"},
                     {"prefix": "10.6.0.0/24", "advertise": "both", "anycast": True, "exclude": ["10.6.0.128/30"]},
                     {"prefix": "10.7.0.0/24", "advertise": "host", "anycast": True}]}
    if not narrow_network:  # no /32 network: plans under a binding quota go by changes too
        data["networks"] = [n for n in data["networks"] if n["prefix"] != "10.5.0.7/32"]
    data.update(extra)
    return parse_config(data)


def whole_table_desired(endpoints: Iterable[Endpoint], config: AgentConfig,
                        host_addresses: Collection[IPAddress] = (), drained: bool = False) -> Desired:
    """The previous desired_routes, which walked every endpoint on every pass: the reference."""
    routes: dict[IPNetwork, Route] = {}
    sources: dict[IPNetwork, list[str]] = {}
    refused: dict[IPNetwork, tuple[Refusal, list[str]]] = {}
    claims: dict[IPNetwork, dict[str, list[str]]] = {}
    attributes = {network.prefix: network.attributes(config.ownership_community) for network in config.networks}
    if drained:
        attributes = {prefix: drained_attributes(a) for prefix, a in attributes.items()}
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
        network = config.network_for(host.network_address)
        assert network is not None
        if len(by_namespace) > 1 and not network.anycast:
            refused[host] = (Refusal.DUPLICATE, labels)
            continue
        used.add(network.prefix)
        if network.advertise in (Advertise.HOST, Advertise.BOTH):
            routes[host] = Route(host, next_hop[host.version], attributes[network.prefix])
            sources[host] = labels
            owners[host] = sorted(by_namespace)[0]  # anycast: counted for the first holder by name
    for network in config.networks:
        if network.advertise == Advertise.HOST:
            continue
        if network.aggregate_when == AggregateWhen.ALWAYS or network.prefix in used:
            prefix = network.prefix
            routes[prefix] = Route(prefix, next_hop[prefix.version], attributes[prefix])
            sources.setdefault(prefix, []).append(f"network {network.label}")
    return Desired(routes=routes, sources={p: tuple(sorted(set(s))) for p, s in sources.items()},
                   refused={p: (why, tuple(sorted(set(s)))) for p, (why, s) in refused.items()}, owners=owners)


ADDRESSES = [f"10.{n}.0.{h}/24" for n in (1, 2, 3, 4, 6, 7) for h in (1, 2, 3, 129, 250)] + ["10.5.0.7/32",
                                                                                           "10.9.0.1/24"]
NAMESPACES = ["", "/run/netns/a", "/run/netns/b", "/run/netns/c"]

# one event: (namespace, ifindex, ready, addresses) sets that endpoint; addresses None removes it
events = st.tuples(st.sampled_from(NAMESPACES), st.integers(2, 3), st.booleans(),
                   st.one_of(st.none(), st.lists(st.sampled_from(ADDRESSES), max_size=4)))
sequences = st.lists(st.lists(events, min_size=1, max_size=4), min_size=1, max_size=25)


def apply_events(present: dict[tuple[str, int], Endpoint], batch: list[Any]) -> dict[str, tuple[Endpoint, ...]]:
    for netns, ifindex, ready, addresses in batch:
        if addresses is None:
            present.pop((netns, ifindex), None)
        else:
            present[(netns, ifindex)] = Endpoint(netns, f"eth{ifindex}", ifindex, IpvlanMode.L3, "eth0",
                                                 tuple(ipaddress.ip_interface(a) for a in addresses), ready)
    return group_by_namespace(sorted(present.values(), key=lambda e: e.key))


@settings(max_examples=300, deadline=None)
@given(sequence=sequences)
def test_the_index_agrees_with_the_whole_table_derivation_after_every_update(sequence: list[list[Any]]) -> None:
    cfg = config()
    index = DesiredIndex(cfg, {HOST})
    present: dict[tuple[str, int], Endpoint] = {}
    before = index.desired()
    for batch in sequence:
        touched = index.update(apply_events(present, batch))
        now = index.desired()
        assert now == whole_table_desired(present.values(), cfg, {HOST})
        # every prefix whose outcome changed was reported as touched
        for name in ("routes", "sources", "refused", "owners"):
            old, new = getattr(before, name), getattr(now, name)
            assert {p for p in {*old, *new} if old.get(p) != new.get(p)} <= touched
        assert index.refused_by_reason == {reason: {p for p, (why, _) in now.refused.items() if why == reason}
                                           for reason in Refusal}
        before = now


@settings(max_examples=150, deadline=None)
@given(sequence=sequences, quota=st.sampled_from([None, 1, 3]), cap=st.sampled_from([1000, 6]),
       drains=st.lists(st.sampled_from(["no", "drained", "withdrawn"]), min_size=1, max_size=25),
       narrow_network=st.booleans())
async def test_plans_by_changes_leave_gobgpd_as_a_whole_table_plan_would(sequence: list[list[Any]],
                                                                        quota: int | None, cap: int,
                                                                        drains: list[str],
                                                                        narrow_network: bool) -> None:
    cfg = config(narrow_network, max_prefixes=cap, max_prefixes_per_namespace=quota or 1000)
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, cfg)
    reconciler.host_addresses = frozenset({HOST})
    present: dict[tuple[str, int], Endpoint] = {}
    for i, batch in enumerate(sequence):
        drain = drains[i % len(drains)]  # drained, withdrawn or undrained between the changes
        reconciler.drained, reconciler.withdrawn = drain != "no", drain == "withdrawn"
        held_before = {prefix: route for prefix, route in fake.rib.items() if route.owned_by(OWNER)}
        advertised_before = set(reconciler.advertised)
        by_namespace = apply_events(present, batch)
        desired = whole_table_desired(present.values(), cfg, {HOST}, reconciler.drained)
        # what a whole-table plan from the same state would have chosen (held routes first, then by prefix)
        expected = plan(desired.routes, held_before, cap, cfg.namespace_quota, desired.owners, advertised_before)
        await reconciler.reconcile(by_namespace)
        if reconciler.withdrawn:
            assert not fake.owned()
            continue
        held = {prefix: route for prefix, route in fake.rib.items() if route.owned_by(OWNER)}
        assert held == {route.prefix: route for route in (*expected.keep, *expected.add)}
        assert reconciler.stats.refused[Refusal.QUOTA] == {route.prefix for route in expected.over_quota}
        assert plan(desired.routes, held, cap, cfg.namespace_quota, desired.owners, reconciler.advertised).empty


async def test_after_the_first_pass_a_change_is_planned_from_the_changed_prefixes_alone() -> None:
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, config())
    present: dict[tuple[str, int], Endpoint] = {}
    await reconciler.reconcile(apply_events(present, [("/run/netns/a", 2, True, ["10.1.0.1/24", "10.1.0.2/24"])]))
    p = await reconciler.reconcile(apply_events(present, [("/run/netns/b", 2, True, ["10.3.0.1/24"])]))
    assert [str(r.prefix) for r in p.add] == ["10.3.0.1/32"] and not p.withdraw
    assert reconciler.stats.planned_by_changes == 1


async def test_under_a_binding_quota_a_change_is_planned_from_the_changed_namespace_alone() -> None:
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, config(False, max_prefixes_per_namespace=2))
    present: dict[tuple[str, int], Endpoint] = {}
    flood = ["10.3.0.1/24", "10.3.0.2/24", "10.3.0.4/24", "10.3.0.3/24"]

    async def step(*batch: Any) -> tuple[list[str], list[str], list[str]]:
        p = await reconciler.reconcile(apply_events(present, list(batch)))
        return ([str(r.prefix) for r in p.add], [str(r.prefix) for r in p.withdraw],
                sorted(str(prefix) for prefix in reconciler.stats.refused[Refusal.QUOTA]))

    await step(("/run/netns/a", 2, True, flood[:2]))
    # the namespace goes over its quota: the new addresses are refused, the ones it held stay
    assert await step(("/run/netns/a", 2, True, flood)) == ([], [], ["10.3.0.3/32", "10.3.0.4/32"])
    # another namespace changes: only its prefix is planned, the refusals stay
    assert await step(("/run/netns/b", 2, True, ["10.3.0.9/24"])) == (
        ["10.3.0.9/32"], [], ["10.3.0.3/32", "10.3.0.4/32"])
    # one it held goes: the first refused one by prefix order takes its place, as a whole-table plan does
    assert await step(("/run/netns/a", 2, True, flood[1:])) == (["10.3.0.3/32"], ["10.3.0.1/32"], ["10.3.0.4/32"])
    # back within its quota: nothing refused
    assert await step(("/run/netns/a", 2, True, flood[2:])) == (["10.3.0.4/32"], ["10.3.0.2/32"], [])
    assert await step(("/run/netns/a", 2, True, [*flood[2:], "10.3.0.5/24"])) == ([], [], ["10.3.0.5/32"])
    # an advertised address moves in from another namespace: held first, then by prefix order, so it is cut
    assert await step(("/run/netns/b", 2, True, []), ("/run/netns/a", 2, True, [*flood[2:], "10.3.0.5/24",
                                                                               "10.3.0.9/24"])) == (
        [], ["10.3.0.9/32"], ["10.3.0.5/32", "10.3.0.9/32"])
    assert reconciler.stats.planned_by_changes == 6
