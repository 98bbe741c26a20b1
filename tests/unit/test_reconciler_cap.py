"""The reconciler remembers what it advertised across a gobgpd restart (empty RIB), so the caps do not
reshuffle which of a namespace's prefixes are advertised."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from agent.config import parse_config
from agent.endpoints import Endpoint, IpvlanMode
from agent.model import IPNetwork, Route
from agent.reconciler import Reconciler
from agent.routes import group_by_namespace

CONFIG = parse_config({"uplinks": ["eth0"], "ownership_community": "65001:4242:1", "max_prefixes": 10,
                       "max_prefixes_per_namespace": 10,
                       "networks": [{"prefix": "10.0.0.0/16", "advertise": "host"}]})


class StubGobgpd:
    """The four calls the reconciler makes, on a dict."""

    def __init__(self) -> None:
        self.rib: dict[IPNetwork, Route] = {}

    async def add_paths(self, routes: Sequence[Route]) -> None:
        self.rib.update((route.prefix, route) for route in routes)

    async def delete_paths(self, routes: Sequence[Route]) -> None:
        for route in routes:
            self.rib.pop(route.prefix, None)

    async def path_count(self, version: int) -> int:
        return sum(prefix.version == version for prefix in self.rib)

    async def list_owned_paths(self, version: int) -> list[Route]:
        return [route for prefix, route in self.rib.items() if prefix.version == version]


def namespace(name: str, hosts: range) -> Endpoint:
    return Endpoint(f"/run/netns/{name}", "eth0", 2, IpvlanMode.L3, "eth0",
                    tuple(ipaddress.ip_interface(f"10.0.{int(name == 'b')}.{i}/16") for i in hosts), True)


def hosts_of(rib: dict[IPNetwork, Route], third_octet: int) -> set[int]:
    return {int(p.network_address) & 0xFF for p in rib if (int(p.network_address) >> 8) & 0xFF == third_octet}


async def test_advertised_prefixes_keep_their_place_across_a_gobgpd_restart() -> None:
    gobgpd = StubGobgpd()
    reconciler = Reconciler(gobgpd, CONFIG)  # type: ignore[arg-type]
    await reconciler.reconcile(group_by_namespace([namespace("a", range(5, 10)), namespace("b", range(5))]))
    assert hosts_of(gobgpd.rib, 0) == {5, 6, 7, 8, 9}
    # a gains five lower addresses; its fair share (5 of 10) stays with the five it had
    grown = [namespace("a", range(10)), namespace("b", range(5))]
    await reconciler.reconcile(group_by_namespace(grown))
    assert hosts_of(gobgpd.rib, 0) == {5, 6, 7, 8, 9}
    gobgpd.rib.clear()  # gobgpd restarted without graceful restart state
    reconciler.invalidate()
    await reconciler.reconcile(group_by_namespace(grown))
    assert hosts_of(gobgpd.rib, 0) == {5, 6, 7, 8, 9} and hosts_of(gobgpd.rib, 1) == {0, 1, 2, 3, 4}
