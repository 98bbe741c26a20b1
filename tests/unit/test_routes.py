from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig, parse_config
from agent.endpoints import Endpoint, IpvlanMode
from agent.model import Attributes, Community, IPNetwork, LargeCommunity, Route
from agent.reconciler import Reconciler
from agent.routes import Desired, Plan, Refusal, allocate, desired_routes, plan

from ..fakes import FakeGobgp

OWNER = LargeCommunity(65001, 4242, 1)


def config(**extra: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "uplinks": ["eth0"],
        "ownership_community": str(OWNER),
        "networks": [
            {"prefix": "10.1.100.0/24", "advertise": "both", "communities": ["65001:100"], "local_pref": 200},
            {"prefix": "10.1.200.0/24", "advertise": "host", "med": 5},
            {"prefix": "10.1.50.0/24", "advertise": "aggregate"},
            {"prefix": "2001:db8:100::/64", "advertise": "both"},
        ],
    }
    data.update(extra)
    return parse_config(data)


def endpoint(*addresses: str, ready: bool = True, netns: str = "/run/netns/c1", ifindex: int = 2) -> Endpoint:
    return Endpoint(netns, "eth0", ifindex, IpvlanMode.L3, "eth0",
                    tuple(ipaddress.ip_interface(a) for a in addresses), ready)


def prefixes(routes: Any) -> set[str]:
    return {str(p) for p in routes}


def test_host_and_aggregate_routes_per_network_mode() -> None:
    desired = desired_routes([endpoint("10.1.100.2/24", "10.1.200.3/24", "10.1.50.4/24", "2001:db8:100::2/64")],
                             config())
    assert prefixes(desired.routes) == {
        "10.1.100.2/32", "10.1.100.0/24",  # both
        "10.1.200.3/32",  # host only
        "10.1.50.0/24",  # aggregate only
        "2001:db8:100::2/128", "2001:db8:100::/64",
    }
    host = desired.routes[ipaddress.ip_network("10.1.100.2/32")]
    assert host.attributes == Attributes((Community(65001, 100),), (OWNER,), 200, None)
    assert host.next_hop is None
    assert desired.routes[ipaddress.ip_network("10.1.200.3/32")].attributes.med == 5
    assert desired.sources[ipaddress.ip_network("10.1.100.0/24")] == ("network 10.1.100.0/24",)
    assert desired.sources[ipaddress.ip_network("10.1.100.2/32")] == ("/run/netns/c1:eth0",)


def test_not_ready_endpoint_advertises_nothing() -> None:
    assert desired_routes([endpoint("10.1.100.2/24", ready=False)], config()).routes == {}


def test_aggregate_always() -> None:
    cfg = config(networks=[{"prefix": "10.1.100.0/24", "aggregate_when": "always"}])
    assert prefixes(desired_routes([], cfg).routes) == {"10.1.100.0/24"}


def test_allow_list_refuses_hijack() -> None:
    desired = desired_routes([endpoint("8.8.8.8/32", "10.1.100.2/24")], config())
    assert prefixes(desired.routes) == {"10.1.100.2/32", "10.1.100.0/24"}
    assert prefixes(desired.outside) == {"8.8.8.8/32"}


def test_explicit_next_hop() -> None:
    cfg = config(next_hop={"ipv4": "192.0.2.11", "ipv6": "2001:db8::11"})
    desired = desired_routes([endpoint("10.1.100.2/24", "2001:db8:100::2/64")], cfg)
    assert {str(r.next_hop) for r in desired.routes.values()} == {"192.0.2.11", "2001:db8::11"}


def test_address_claimed_from_two_namespaces_is_advertised_for_neither() -> None:
    claimed = [endpoint("10.1.100.2/24", "10.1.100.3/24"), endpoint("10.1.100.2/24", netns="/run/netns/c2")]
    desired = desired_routes(claimed, config())
    assert prefixes(desired.routes) == {"10.1.100.0/24", "10.1.100.3/32"}
    assert desired.refused == {ipaddress.ip_network("10.1.100.2/32"):
                               (Refusal.DUPLICATE, ("/run/netns/c1:eth0", "/run/netns/c2:eth0"))}
    assert desired.owners == {ipaddress.ip_network("10.1.100.3/32"): "/run/netns/c1"}
    # the same address on two interfaces of one namespace is that namespace's: one route
    same = desired_routes([endpoint("10.1.100.2/24"), endpoint("10.1.100.2/24", ifindex=3)], config())
    assert "10.1.100.2/32" in prefixes(same.routes) and not same.refused


def test_an_anycast_address_held_by_several_namespaces_is_advertised_once_with_every_source() -> None:
    cfg = config(networks=[{"prefix": "10.1.100.0/24", "advertise": "both", "anycast": True},
                           {"prefix": "10.1.200.0/24", "advertise": "host"}])
    held = [endpoint("10.1.100.2/24", "10.1.200.2/24", netns="/run/netns/c2"),
            endpoint("10.1.100.2/24", "10.1.200.2/24", netns="/run/netns/c1"),
            endpoint("10.1.100.2/24", netns="/run/netns/c3", ifindex=5)]
    desired = desired_routes(held, cfg)
    anycast = ipaddress.ip_network("10.1.100.2/32")
    assert prefixes(desired.routes) == {"10.1.100.0/24", "10.1.100.2/32"}
    assert desired.sources[anycast] == ("/run/netns/c1:eth0", "/run/netns/c2:eth0", "/run/netns/c3:eth0")
    assert desired.owners == {anycast: "/run/netns/c1"}
    # the network beside it keeps today's rule
    assert desired.refused == {ipaddress.ip_network("10.1.200.2/32"):
                               (Refusal.DUPLICATE, ("/run/netns/c1:eth0", "/run/netns/c2:eth0"))}
    # the host's own addresses and excluded ones stay refused in an anycast network too
    refused = desired_routes(held, cfg, host_addresses={ipaddress.ip_address("10.1.100.2")})
    assert refused.refused_for(Refusal.HOST_ADDRESS) == {anycast: desired.sources[anycast]}


async def test_an_anycast_route_stays_put_while_its_holders_come_and_go() -> None:
    cfg = config(networks=[{"prefix": "10.1.100.0/24", "advertise": "host", "anycast": True}])
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, cfg)
    a, b = endpoint("10.1.100.2/24", netns="/run/netns/a"), endpoint("10.1.100.2/24", netns="/run/netns/b")
    first = await reconciler.reconcile({"/run/netns/a": (a,)})
    assert [str(r.prefix) for r in first.add] == ["10.1.100.2/32"]
    for holders in ({"/run/netns/a": (a,), "/run/netns/b": (b,)}, {"/run/netns/b": (b,)}):
        p = await reconciler.reconcile(holders)
        assert p.empty  # a second holder, then the first one gone: the same route, nothing sent
        assert reconciler.desired is not None
        assert reconciler.desired.sources[ipaddress.ip_network("10.1.100.2/32")] == tuple(
            f"{netns}:eth0" for netns in sorted(holders))
    last = await reconciler.reconcile({})
    assert [str(r.prefix) for r in last.withdraw] == ["10.1.100.2/32"]


def test_host_addresses_and_next_hops_are_never_advertised_from_a_container() -> None:
    cfg = config(next_hop={"ipv4": "10.1.100.254"})
    desired = desired_routes([endpoint("10.1.100.1/24", "10.1.100.254/24", "10.1.100.7/24")], cfg,
                             host_addresses={ipaddress.ip_address("10.1.100.1")})
    assert prefixes(desired.routes) == {"10.1.100.0/24", "10.1.100.7/32"}
    assert {str(p): why for p, (why, _) in desired.refused.items()} == {
        "10.1.100.1/32": Refusal.HOST_ADDRESS, "10.1.100.254/32": Refusal.HOST_ADDRESS}


def test_excluded_prefixes_are_refused() -> None:
    cfg = config(networks=[{"prefix": "10.1.100.0/24", "exclude": ["10.1.100.0/28"]}])
    desired = desired_routes([endpoint("10.1.100.1/24", "10.1.100.17/24")], cfg)
    assert prefixes(desired.routes) == {"10.1.100.0/24", "10.1.100.17/32"}
    assert desired.refused_for(Refusal.EXCLUDED) == {ipaddress.ip_network("10.1.100.1/32"): ("/run/netns/c1:eth0",)}


def r(prefix: str, local_pref: int | None = None) -> Route:
    return Route(ipaddress.ip_network(prefix), None, Attributes(large_communities=(OWNER,), local_pref=local_pref))


def as_map(*routes: Route) -> dict[Any, Route]:
    return {route.prefix: route for route in routes}


def apply_plan(actual: Mapping[IPNetwork, Route], p: Plan) -> dict[IPNetwork, Route]:
    """What gobgpd holds after the Reconciler applied ``p`` (the real applying code, on an in-memory gobgpd)."""
    fake = FakeGobgp(OWNER, batch=7)
    fake.rib.update(actual)
    asyncio.run(Reconciler(fake, config())._apply(p, dict(actual), Desired({}, {})))
    return fake.owned()


def test_plan_diff() -> None:
    desired = as_map(r("10.0.0.1/32"), r("10.0.0.2/32", 300), r("10.0.0.3/32"))
    actual = as_map(r("10.0.0.1/32"), r("10.0.0.2/32", 100), r("10.0.0.9/32"))
    p = plan(desired, actual, 100)
    assert prefixes(r.prefix for r in p.keep) == {"10.0.0.1/32"}
    assert p.add == (r("10.0.0.2/32", 300), r("10.0.0.3/32"))  # changed attributes are re-added
    assert p.withdraw == (r("10.0.0.9/32"),)
    assert plan(desired, apply_plan(actual, p), 100).empty


def test_cap_keeps_existing_and_refuses_new_aggregates_first() -> None:
    actual = as_map(r("10.0.0.5/32"))
    desired = as_map(r("10.0.0.5/32"), r("10.0.0.1/32"), r("10.0.0.0/24"), r("10.0.0.2/32"))
    p = plan(desired, actual, 2)
    assert p.add == (r("10.0.0.0/24"),)
    assert p.withdraw == ()
    assert p.over_cap == (r("10.0.0.1/32"), r("10.0.0.2/32"))


def test_cap_lowered_below_holdings_trims_to_cap() -> None:
    actual = as_map(r("10.0.0.1/32"), r("10.0.0.2/32"), r("10.0.0.3/32"))
    p = plan(actual, actual, 2)
    assert len(apply_plan(actual, p)) == 2 and p.add == ()


routes_strategy = st.lists(
    st.builds(lambda i, lp: r(f"10.0.{i // 256}.{i % 256}/32", lp),
              st.integers(0, 600), st.sampled_from([None, 100, 200])),
    max_size=40,
).map(lambda rs: as_map(*rs))


@given(routes_strategy, routes_strategy, st.integers(1, 50))
def test_plan_converges_and_respects_cap(desired: dict[Any, Route], actual: dict[Any, Route], cap: int) -> None:
    p = plan(desired, actual, cap)
    after = apply_plan(actual, p)
    assert plan(desired, after, cap).empty  # a second pass sends nothing
    assert len(after) <= cap
    assert all(desired.get(prefix) == route for prefix, route in after.items())  # nothing stale, nothing wrong
    if len(actual) <= cap:  # nothing that should stay is withdrawn to make room
        assert all(prefix in after for prefix in actual if desired.get(prefix) == actual[prefix])
    if len(desired) <= cap:
        assert after == desired


@given(st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_nothing_outside_allow_list_is_ever_desired(raw: list[int]) -> None:
    cfg = config()
    desired = desired_routes([endpoint(*(f"{ipaddress.ip_address(a)}/24" for a in raw))], cfg)
    for prefix in desired.routes:
        assert any(prefix.subnet_of(n.prefix) for n in cfg.networks if n.prefix.version == prefix.version)


def host(namespace: int, i: int) -> Route:
    return r(f"10.{namespace}.{i // 256}.{i % 256}/32")


@st.composite
def namespaces_and_caps(draw: st.DrawFn) -> tuple[dict[Any, Route], dict[Any, str], int, int, int]:
    """Desired routes of up to 6 namespaces (0-40 host routes each) and up to 3 aggregates, a cap, a quota."""
    sizes = draw(st.lists(st.integers(0, 40), min_size=1, max_size=6))
    desired: dict[Any, Route] = {}
    owners: dict[Any, str] = {}
    for n, size in enumerate(sizes):
        for i in range(size):
            route = host(n + 1, i)
            desired[route.prefix] = route
            owners[route.prefix] = f"/run/netns/c{n}"
    aggregates = draw(st.integers(0, 3))
    for a in range(aggregates):
        route = r(f"10.{200 + a}.0.0/16")
        desired[route.prefix] = route
    return desired, owners, draw(st.integers(1, 120)), draw(st.integers(1, 50)), aggregates


@given(namespaces_and_caps(), st.data())
def test_a_namespace_within_its_quota_is_fully_advertised_whatever_the_others_hold(
        case: tuple[dict[Any, Route], dict[Any, str], int, int, int], data: st.DataObject) -> None:
    desired, owners, cap, quota, aggregates = case
    # whatever gobgpd holds now: nothing (a restart), a random part of desired, or other namespaces' routes
    actual = as_map(*data.draw(st.lists(st.sampled_from(sorted(desired.values(), key=lambda x: x.sort_key)))
                               if desired else st.just([])))
    p = plan(desired, actual, cap, quota, owners)
    after = apply_plan(actual, p)
    assert plan(desired, after, cap, quota, owners).empty
    assert len(after) <= cap
    sizes: dict[str, int] = {}
    for owner in owners.values():
        sizes[owner] = sizes.get(owner, 0) + 1
    for namespace, n in sizes.items():
        if n <= quota and aggregates + sum(min(m, quota, n) for m in sizes.values()) <= cap:
            mine = {prefix for prefix, owner in owners.items() if owner == namespace}
            assert mine <= set(after), (namespace, n, sizes)
    if aggregates + sum(min(m, quota) for m in sizes.values()) <= cap:  # then everyone gets min(n, quota)
        for namespace, n in sizes.items():
            assert sum(owners.get(prefix) == namespace for prefix in after) == min(n, quota)


def test_a_big_namespace_does_not_keep_a_new_one_out_even_from_an_empty_rib() -> None:
    big = {host(1, i).prefix: host(1, i) for i in range(50)}
    owners = dict.fromkeys(big, "/run/netns/big")
    actual = dict(big)  # the big one got there first and fills the cap
    new = {host(2, i).prefix: host(2, i) for i in range(5)}
    owners.update(dict.fromkeys(new, "/run/netns/new"))
    desired = {**big, **new}
    for held in (actual, {}):  # before and after a gobgpd restart
        after = apply_plan(held, plan(desired, held, 50, 1000, owners))
        assert set(new) <= set(after) and len(after) == 50


def test_quota_cuts_one_namespace_and_keeps_its_previously_advertised_routes() -> None:
    routes = {host(1, i).prefix: host(1, i) for i in range(10)}
    owners = dict.fromkeys(routes, "/run/netns/c")
    earlier = {host(1, i).prefix for i in range(5, 10)}
    chosen, over_quota, over_cap = allocate(routes, 100, 5, owners, earlier)
    assert {route.prefix for route in chosen} == earlier and len(over_quota) == 5 and not over_cap
