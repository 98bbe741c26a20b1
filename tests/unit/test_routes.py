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
from agent.routes import Desired, Plan, desired_routes, plan

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


def test_same_address_in_two_namespaces_is_one_route() -> None:
    desired = desired_routes([endpoint("10.1.100.2/24"), endpoint("10.1.100.2/24", netns="/run/netns/c2")], config())
    assert desired.sources[ipaddress.ip_network("10.1.100.2/32")] == ("/run/netns/c1:eth0", "/run/netns/c2:eth0")


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
