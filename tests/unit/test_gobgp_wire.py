"""The WireCache's hand-framed bytes are exactly what protobuf would send."""

from __future__ import annotations

import ipaddress

from agent.gobgp import WireCache, api, route_to_path
from agent.model import Attributes, Community, LargeCommunity, Route

OWNER = LargeCommunity(65001, 4242, 1)


def route(prefix: str, community: int = 1) -> Route:
    return Route(ipaddress.ip_network(prefix), None,
                 Attributes(communities=(Community(65001, community),), large_communities=(OWNER,)))


def test_framed_paths_join_into_the_request_protobuf_would_build() -> None:
    cache = WireCache()
    routes = [route("10.1.0.2/32"), route("2001:db8::2/128"), route(f"10.{200}.0.0/16")]
    joined = b"".join(cache.framed(r) for r in routes)
    assert joined == api.AddPathStreamRequest(paths=[route_to_path(r) for r in routes]).SerializeToString()


def test_a_withdraw_is_the_same_path_flagged() -> None:
    cache = WireCache()
    (path,) = api.AddPathStreamRequest.FromString(cache.framed(route("10.1.0.2/32"), withdraw=True)).paths
    expected = route_to_path(route("10.1.0.2/32"))
    expected.is_withdraw = True
    assert path == expected


def test_one_entry_per_prefix_and_a_changed_route_is_rebuilt() -> None:
    cache = WireCache()
    first = cache.framed(route("10.1.0.2/32", 1))
    second = cache.framed(route("10.1.0.2/32", 2))
    assert first != second and len(cache) == 1
    cache.keep_only(4, set())
    assert len(cache) == 0
