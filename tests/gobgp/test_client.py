"""The GoBGP client against a real gobgpd 3.10 (Debian package), checked through the API and the CLI."""

from __future__ import annotations

import ipaddress
import json

import pytest
from ipvlan_bgp_lab.gobgpd import Gobgpd, GobgpdError, free_port

from agent.gobgp import (
    GobgpClient,
    GobgpEventKind,
    GobgpNotReady,
    GobgpRejected,
    GobgpUnavailable,
    _mapped,
    route_to_path,
)
from agent.gobgpapi import gobgp_pb2 as api
from agent.model import Attributes, Community, LargeCommunity, Route

from .conftest import OWNER

pytestmark = pytest.mark.gobgpd

FULL_ATTRS = Attributes(
    communities=(Community(65001, 100), Community(65001, 7)),
    large_communities=(OWNER, LargeCommunity(65001, 1, 2)),
    local_pref=200,
    med=17,
)


def route(prefix: str, next_hop: str | None = None, attrs: Attributes | None = None) -> Route:
    return Route(
        ipaddress.ip_network(prefix),
        ipaddress.ip_address(next_hop) if next_hop else None,
        attrs or Attributes(large_communities=(OWNER,)),
    )


@pytest.mark.parametrize(
    ("version", "routes"),
    [
        (4, [route("10.1.100.2/32", attrs=FULL_ATTRS), route("10.1.100.0/24", "192.0.2.10", FULL_ATTRS)]),
        (6, [route("2001:db8:100::2/128", attrs=FULL_ATTRS), route("2001:db8:100::/64", "2001:db8::10", FULL_ATTRS)]),
    ],
)
async def test_add_list_delete_round_trip(
    client: GobgpClient, gobgpd: Gobgpd, version: int, routes: list[Route]
) -> None:
    await client.add_paths(routes[:1])  # unary AddPath
    await client.add_paths(routes[1:] + routes[:1])  # stream; re-adding is idempotent
    assert await client.list_owned_paths(version) == sorted(routes, key=lambda r: r.sort_key)

    family = "ipv4" if version == 4 else "ipv6"
    rib = json.loads(gobgpd.cli("global", "rib", "-a", family, "-j"))
    assert set(rib) == {str(r.prefix) for r in routes}
    for prefix, paths in rib.items():
        attrs = {a["type"]: a for a in paths[0]["attrs"]}
        assert attrs[1]["value"] == 0  # ORIGIN IGP
        assert sorted(attrs[8]["communities"]) == sorted(c.to_u32() for c in FULL_ATTRS.communities)
        assert {(c["ASN"], c["LocalData1"], c["LocalData2"]) for c in attrs[32]["value"]} == {
            (65001, 4242, 1),
            (65001, 1, 2),
        }
        assert attrs[5]["value"] == 200 and attrs[4]["metric"] == 17
        expected_nh = next(
            str(r.next_hop or ("0.0.0.0" if version == 4 else "::")) for r in routes if str(r.prefix) == prefix
        )
        nh = attrs[3]["nexthop"] if version == 4 else attrs[14]["nexthop"]
        assert nh == expected_nh

    await client.delete_paths(routes[:1])  # unary DeletePath by path
    assert await client.list_owned_paths(version) == routes[1:]
    await client.delete_paths(routes)  # stream withdraw, one already gone
    assert await client.list_owned_paths(version) == []


async def test_ten_thousand_paths_via_stream(client: GobgpClient) -> None:
    base = int(ipaddress.ip_address("10.64.0.0"))
    routes = [route(f"{ipaddress.ip_address(base + i)}/32") for i in range(10_000)]
    await client.add_paths(routes)
    assert len(await client.list_owned_paths(4)) == 10_000
    await client.delete_paths(routes)
    assert await client.list_owned_paths(4) == []


async def test_ownership_filter_ignores_foreign_paths(client: GobgpClient, gobgpd: Gobgpd) -> None:
    gobgpd.cli("global", "rib", "add", "-a", "ipv4", "10.9.9.0/24")  # an operator's own path
    foreign = Route(
        ipaddress.ip_network("10.9.8.0/24"), None, Attributes(large_communities=(LargeCommunity(65001, 4242, 2),))
    )
    async with GobgpClient(client.target, LargeCommunity(65001, 4242, 2)) as other_agent:
        await other_agent.add_paths([foreign])
    mine = route("10.1.100.2/32")
    await client.add_paths([mine])
    assert await client.list_owned_paths(4) == [mine]
    assert {str(r.prefix) for r in await client.list_paths(4)} == {"10.9.9.0/24", "10.9.8.0/24", "10.1.100.2/32"}
    await client.delete_paths([mine])
    assert {str(r.prefix) for r in await client.list_paths(4)} == {"10.9.9.0/24", "10.9.8.0/24"}


async def test_refuses_to_write_unowned_route(client: GobgpClient) -> None:
    with pytest.raises(ValueError, match="ownership community"):
        await client.add_paths([Route(ipaddress.ip_network("10.1.1.1/32"))])
    with pytest.raises(ValueError, match="ownership community"):
        await client.delete_paths([Route(ipaddress.ip_network("10.1.1.1/32"))])


async def test_rejected_path_carries_gobgpd_message(client: GobgpClient) -> None:
    bad = route_to_path(route("10.1.1.1/32"))
    del bad.pattrs[1]  # drop NEXT_HOP
    with pytest.raises(GobgpRejected, match=r"AddPath: UNKNOWN: .*nexthop"), _mapped("AddPath"):
        await client._stub.AddPath(api.AddPathRequest(path=bad), timeout=5)


async def test_connect_times_out_with_clear_error() -> None:
    async with GobgpClient(f"127.0.0.1:{free_port()}", OWNER) as client:
        with pytest.raises(GobgpUnavailable, match=r"gave up after 0.3 s"):
            await client.connect(timeout=0.3)


async def test_not_ready_without_global_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    daemon = Gobgpd("", tmp_path_factory.mktemp("gobgpd-empty"))
    with pytest.raises(GobgpdError, match="not ready"):
        daemon.start(timeout=2)  # the API answers, but with asn 0
    try:
        async with GobgpClient(daemon.target, OWNER) as client:
            with pytest.raises(GobgpNotReady):
                await client.connect(timeout=3)
    finally:
        daemon.stop()


async def test_restart_is_surfaced_as_lost_then_ready(client: GobgpClient, gobgpd: Gobgpd) -> None:
    await client.add_paths([route("10.1.100.2/32")])
    events = client.watch()
    assert (await anext(events)).kind is GobgpEventKind.READY
    gobgpd.kill()
    assert (await anext(events)).kind is GobgpEventKind.LOST
    gobgpd.start()
    assert (await anext(events)).kind is GobgpEventKind.READY
    assert await client.list_owned_paths(4) == []  # gobgpd keeps API paths only in memory
    await events.aclose()
