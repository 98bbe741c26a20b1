"""The shipped config/gobgpd.toml against a real gobgpd standing in for the ToR: neighbors held back until the
agent releases them, an operator's own disable respected, and nothing imported from the ToR."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.gobgpd import Gobgpd, free_port

from agent.daemon import running
from agent.gobgp import GobgpClient
from agent.model import Attributes, LargeCommunity, Route
from agent.peers import held_back, release_held_peers
from agent.reconciler import Reconciler

from ..helpers import eventually
from .conftest import OWNER
from .test_daemon import agent_config
from .test_export_policy import host_config_peering_with, tor_config

pytestmark = pytest.mark.gobgpd
TOR_OWNER = LargeCommunity(65000, 4242, 9)


def route(prefix: str, owner: LargeCommunity = OWNER) -> Route:
    # an explicit next hop: two gobgpds on loopback reject a rewritten 127.0.0.1 one
    return Route(ipaddress.ip_network(prefix), ipaddress.ip_address("192.0.2.11"),
                 Attributes(large_communities=(owner,)))


@pytest.fixture
def rack(tmp_path: Path) -> Iterator[tuple[Gobgpd, Gobgpd]]:
    bgp_port = free_port()
    with Gobgpd(tor_config(bgp_port), tmp_path / "tor") as tor, \
            Gobgpd(host_config_peering_with(bgp_port), tmp_path / "host") as host:
        yield tor, host


def tor_rib(tor: Gobgpd) -> set[str]:
    return set(json.loads(tor.cli("global", "rib", "-a", "ipv4", "-j") or "{}"))


async def test_neighbor_held_back_until_released_then_left_alone_when_an_operator_disables_it(
        rack: tuple[Gobgpd, Gobgpd]) -> None:
    tor, host = rack
    async with GobgpClient(host.target, OWNER) as client:
        (peer,) = await client.list_peers()
        assert (peer.configured_admin_down, peer.admin_down, peer.uptime) == (True, True, None)
        assert held_back([peer]) == [peer.address]
        await client.add_paths([route("10.1.100.5/32"), route("10.1.100.0/24")])

        with pytest.raises(AssertionError):  # held back: no session however long we look (connect-retry is 1 s)
            await eventually(lambda: peer_state_is(client, "established"), timeout=3, what="no session")
        assert tor_rib(tor) == set()
        assert await release_held_peers(client) == [peer.address]
        await eventually(lambda: peer_state_is(client, "established"), timeout=30, what="session after release")
        await eventually(lambda: tor_rib(tor) == {"10.1.100.5/32", "10.1.100.0/24"}, what="the ToR has our table")

        host.cli("neighbor", peer.address, "disable")  # the operator's own: the agent must keep its hands off
        await eventually(lambda: peer_state_is(client, "idle"), timeout=30, what="session down after disable")
        assert await release_held_peers(client) == []
        assert (await client.list_peers())[0].admin_down


async def peer_state_is(client: GobgpClient, wanted: str) -> bool:
    (peer,) = await client.list_peers()
    return peer.state == wanted


async def test_nothing_imported_and_path_counts_are_only_local(rack: tuple[Gobgpd, Gobgpd]) -> None:
    tor, host = rack
    async with GobgpClient(tor.target, TOR_OWNER) as tor_client, GobgpClient(host.target, OWNER) as client:
        await tor_client.add_paths([route("0.0.0.0/0", TOR_OWNER), route("10.9.0.0/16", TOR_OWNER)])
        await client.add_paths([route("10.1.100.5/32")])
        await release_held_peers(client)

        await eventually(lambda: peer_state_is(client, "established"), timeout=30, what="session after release")
        await eventually(lambda: "10.1.100.5/32" in tor_rib(tor), what="our path at the ToR")
        adj_in = json.loads(host.cli("neighbor", "127.0.0.1", "adj-in", "-a", "ipv4", "-j") or "{}")
        assert set(adj_in) == {"0.0.0.0/0", "10.9.0.0/16"}  # the ToR did send them ...
        assert [str(r.prefix) for r in await client.list_paths(4)] == ["10.1.100.5/32"]  # ... none was imported
        assert await client.path_count(4) == 1
        reconciler = Reconciler(client, None)  # type: ignore[arg-type]  # only the counting is used
        reconciler.actual = await reconciler.read_actual()
        assert not await reconciler.table_moved()
        await tor_client.add_paths([route("10.9.9.0/24", TOR_OWNER)])  # the ToR's table moves: ours does not
        await eventually(lambda: "10.9.9.0/24" in set(json.loads(
            host.cli("neighbor", "127.0.0.1", "adj-in", "-a", "ipv4", "-j") or "{}")), what="ToR's new route sent")
        assert not await reconciler.table_moved()


async def test_agent_enables_the_neighbor_after_its_push_and_again_after_gobgpd_restarts(
        rack: tuple[Gobgpd, Gobgpd], tmp_path: Path) -> None:
    tor, host = rack
    # no periodic checks within the test: the release must come from the agent seeing gobgpd (re)appear
    config = agent_config(host, tmp_path, next_hop={"ipv4": "192.0.2.11"},
                          timers={"full_reconcile": 3600.0, "rib_check": 3600.0})
    async with running(config), GobgpClient(host.target, OWNER) as client:

        async def released_and_advertised(when: str) -> None:
            await eventually(lambda: peer_state_is(client, "established"), timeout=30, what=f"session {when}")
            await eventually(lambda: "10.1.100.0/24" in tor_rib(tor), what=f"our path at the ToR {when}")

        await released_and_advertised("at the first start")
        host.kill()
        host.start()  # a new gobgpd: the neighbor is held back again, and the agent re-pushes, then enables it
        await released_and_advertised("after gobgpd restarted")
