"""The shipped config/gobgpd.toml: its export policy lets only the ipvlan networks out, whatever the agent does."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from pathlib import Path

import pytest
from ipvlan_bgp_lab.gobgpd import Gobgpd, free_port, global_config

from agent.gobgp import GobgpClient
from agent.model import Attributes, Route
from agent.peers import release_held_peers

from .conftest import OWNER

pytestmark = pytest.mark.gobgpd
SHIPPED = Path(__file__).resolve().parents[2] / "config" / "gobgpd.toml"


def host_config_peering_with(port: int) -> str:
    """The shipped host config, with its ToR neighbour pointed at a local gobgpd."""
    text = SHIPPED.read_text()
    text = text.replace('neighbor-address = "192.0.2.1"', 'neighbor-address = "127.0.0.1"')
    text = text.replace("  [neighbors.timers.config]\n", f"  [neighbors.transport.config]\n    remote-port = {port}\n"
                        f"    local-address = \"127.0.0.1\"\n  [neighbors.timers.config]\n")
    text = text.replace("connect-retry = 5", "connect-retry = 1")
    return text


def tor_config(port: int) -> str:
    return global_config(65000, "10.255.0.254", port) + (
        '[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "127.0.0.1"\n    peer-as = 65001\n'
        "  [neighbors.transport.config]\n    passive-mode = true\n"
    )


async def test_export_policy_drops_paths_outside_the_networks(tmp_path: Path) -> None:
    bgp_port = free_port()
    with Gobgpd(tor_config(bgp_port), tmp_path / "tor") as tor, \
            Gobgpd(host_config_peering_with(bgp_port), tmp_path / "host") as host:
        attrs = Attributes(large_communities=(OWNER,))

        def routes(*prefixes: str) -> list[Route]:
            return [Route(ipaddress.ip_network(p), ipaddress.ip_address("192.0.2.11"), attrs) for p in prefixes]

        async def tor_rib_once_it_has(prefixes: set[str]) -> set[str]:
            deadline = time.monotonic() + 30
            while True:
                rib = set(json.loads(tor.cli("global", "rib", "-a", "ipv4", "-j") or "{}"))
                if rib >= prefixes:
                    return rib
                assert time.monotonic() < deadline, f"ToR never learned {sorted(prefixes - rib)}: {sorted(rib)}"
                await asyncio.sleep(0.1)

        async with GobgpClient(host.target, OWNER) as client:
            await client.add_paths(routes("10.1.100.5/32", "10.1.100.0/24", "8.8.8.8/32", "10.1.0.0/16"))
            await release_held_peers(client)  # the shipped config holds the ToR back for the agent
            await tor_rib_once_it_has({"10.1.100.5/32", "10.1.100.0/24"})
            # Updates on one session arrive in order: once an allowed path sent after the denied ones is at
            # the ToR, the denied ones would be there too, had the policy let them out.
            await client.add_paths(routes("10.1.100.6/32"))
            rib = await tor_rib_once_it_has({"10.1.100.6/32"})
        assert rib == {"10.1.100.5/32", "10.1.100.0/24", "10.1.100.6/32"}  # 8.8.8.8/32 and the /16 never left
        # gobgpd's ListPeer as the status command and the per-peer metrics read it: adj-out after the policy
        deadline = time.monotonic() + 30
        async with GobgpClient(host.target, OWNER) as client:
            while True:
                peers = await client.list_peers()
                if peers and peers[0].advertised == 3:
                    break
                assert time.monotonic() < deadline, peers
                await asyncio.sleep(0.1)
        assert peers[0].address == "127.0.0.1" and peers[0].established and peers[0].asn == 65000
        assert peers[0].uptime is not None and 0 <= peers[0].uptime < 600 and peers[0].accepted == 0
