"""The daemon against a real gobgpd, on this kernel (no ipvlan here: routes come from `aggregate_when =
"always"` networks; endpoint-driven behaviour is covered in the VM tier)."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path
from typing import Any

import pytest
from ipvlan_bgp_lab.gobgpd import Gobgpd

from agent.config import AgentConfig, parse_config
from agent.daemon import Daemon, running
from agent.gobgp import GobgpClient
from agent.model import Attributes, LargeCommunity, Route

from ..helpers import eventually
from .conftest import OWNER

pytestmark = pytest.mark.gobgpd


def agent_config(gobgpd: Gobgpd, tmp_path: Path, **extra: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "uplinks": ["lo"],
        "ownership_community": str(OWNER),
        "netns_dirs": [str(tmp_path / "netns")],
        "gobgp": {"target": gobgpd.target},
        "networks": [
            {"prefix": "10.1.100.0/24", "aggregate_when": "always", "communities": ["65001:100"]},
            {"prefix": "2001:db8:100::/64", "aggregate_when": "always"},
        ],
        "timers": {"full_reconcile": 3600.0},
        "status": {"socket": str(tmp_path / "agent.sock")},
        "metrics": {"listen": ""},
    }
    data.update(extra)
    return parse_config(data)


async def owned_prefixes(client: GobgpClient) -> set[str]:
    return {str(r.prefix) for r in [*await client.list_owned_paths(4), *await client.list_owned_paths(6)]}


async def test_adopts_own_paths_withdraws_stale_leaves_foreign(gobgpd: Gobgpd, client: GobgpClient,
                                                               tmp_path: Path) -> None:
    config = agent_config(gobgpd, tmp_path)
    stale = Route(ipaddress.ip_network("10.1.100.99/32"), None, Attributes(large_communities=(OWNER,)))
    await client.add_paths([stale])
    gobgpd.cli("global", "rib", "add", "-a", "ipv4", "10.9.9.0/24")
    async with GobgpClient(gobgpd.target, LargeCommunity(65001, 4242, 2)) as other:
        await other.add_paths([Route(ipaddress.ip_network("10.9.8.0/24"), None,
                                     Attributes(large_communities=(other.owner,)))])
    async with running(config):
        assert await owned_prefixes(client) == {"10.1.100.0/24", "2001:db8:100::/64"}
        assert {str(r.prefix) for r in await client.list_paths(4)} == {"10.1.100.0/24", "10.9.9.0/24", "10.9.8.0/24"}
    # on_shutdown = retain: the paths stay for the next start
    assert await owned_prefixes(client) == {"10.1.100.0/24", "2001:db8:100::/64"}


async def test_restart_adopts_without_withdrawal(gobgpd: Gobgpd, client: GobgpClient, tmp_path: Path) -> None:
    config = agent_config(gobgpd, tmp_path)
    async with running(config) as daemon:
        first = daemon.reconciler.stats.added
    assert first == 2
    async with running(config) as daemon:
        assert daemon.reconciler.stats.added == 0 and daemon.reconciler.stats.withdrawn == 0
        assert daemon.reconciler.stats.passes >= 1
    assert await owned_prefixes(client) == {"10.1.100.0/24", "2001:db8:100::/64"}


async def test_gobgpd_restart_pushes_everything_back(gobgpd: Gobgpd, client: GobgpClient, tmp_path: Path) -> None:
    config = agent_config(gobgpd, tmp_path)
    async with running(config) as daemon:
        gobgpd.kill()
        gobgpd.start()
        started = time.monotonic()
        await eventually(lambda: _has(client, {"10.1.100.0/24", "2001:db8:100::/64"}), what="paths back")
        print(f"time to full RIB after gobgpd answered: {time.monotonic() - started:.3f} s")
        assert daemon.state.gobgp_restarts == 1


async def _has(client: GobgpClient, wanted: set[str]) -> bool:
    try:
        return await owned_prefixes(client) == wanted
    except Exception:
        return False


async def test_shutdown_withdraw_removes_every_owned_path(gobgpd: Gobgpd, client: GobgpClient,
                                                          tmp_path: Path) -> None:
    config = agent_config(gobgpd, tmp_path, on_shutdown="withdraw")
    gobgpd.cli("global", "rib", "add", "-a", "ipv4", "10.9.9.0/24")
    async with running(config):
        assert await owned_prefixes(client) == {"10.1.100.0/24", "2001:db8:100::/64"}
    assert await owned_prefixes(client) == set()
    assert {str(r.prefix) for r in await client.list_paths(4)} == {"10.9.9.0/24"}


async def test_waits_for_gobgpd_that_starts_late(gobgpd: Gobgpd, client: GobgpClient, tmp_path: Path) -> None:
    config = agent_config(gobgpd, tmp_path, gobgp={"target": gobgpd.target, "connect_timeout": 0.5})
    gobgpd.kill()
    ready = asyncio.Event()
    daemon = Daemon(config, on_ready=ready.set)
    task = asyncio.create_task(daemon.run())
    await eventually(lambda: daemon.reconciler.stats.failures >= 1, what="a failed pass while gobgpd is down")
    assert not ready.is_set()
    gobgpd.start()
    await asyncio.wait_for(ready.wait(), 15)
    assert await owned_prefixes(client) == {"10.1.100.0/24", "2001:db8:100::/64"}
    daemon.stop()
    await asyncio.wait_for(task, 15)


async def test_second_pass_sends_nothing(gobgpd: Gobgpd, client: GobgpClient, tmp_path: Path) -> None:
    config = agent_config(gobgpd, tmp_path)
    async with running(config) as daemon:
        plan = await daemon.reconciler.reconcile(daemon.discovery.snapshot())
        assert plan.empty
        daemon.reconciler.invalidate()  # a full re-read of gobgpd agrees too
        assert (await daemon.reconciler.reconcile(daemon.discovery.snapshot())).empty



async def settled(daemon: Daemon) -> None:
    """Until start-up is over: gobgpd's watch has attached (its first READY costs one more read and pass) and
    no pass or read happened for 0.3 s. An idle window measured before that would see start-up, not idling."""
    stats = daemon.reconciler.stats
    await eventually(lambda: daemon.state.gobgp_reachable, timeout=10, what="gobgpd's watch attached")

    async def quiet() -> bool:
        before = (stats.full_reads, stats.passes)
        await asyncio.sleep(0.3)
        return (stats.full_reads, stats.passes) == before

    await eventually(quiet, timeout=10, what="start-up passes over")


async def test_rib_check_repairs_a_path_deleted_behind_our_back_and_idles_without_passes(
        gobgpd: Gobgpd, client: GobgpClient, tmp_path: Path) -> None:
    config = agent_config(gobgpd, tmp_path, timers={"full_reconcile": 3600.0, "rib_check": 0.1})
    async with running(config) as daemon:
        await settled(daemon)
        stats = daemon.reconciler.stats
        reads, passes = stats.full_reads, stats.passes
        await asyncio.sleep(1.0)  # the observation window itself: ~10 checks of an idle table
        assert (stats.full_reads, stats.passes) == (reads, passes), "idle checks re-read gobgpd or ran passes"
        gobgpd.cli("global", "rib", "del", "-a", "ipv4", "10.1.100.0/24")
        await eventually(lambda: stats.full_reads > reads, timeout=5, what="the moved count triggers a re-read")

        async def repaired() -> bool:
            return "10.1.100.0/24" in await owned_prefixes(client)

        await eventually(repaired, timeout=5, what="the deleted aggregate advertised again")
        reads = stats.full_reads
        await asyncio.sleep(0.5)  # our own re-add is accounted for: no further re-read
        assert stats.full_reads == reads


async def test_rib_check_sees_another_api_user_and_leaves_its_path_alone(
        gobgpd: Gobgpd, client: GobgpClient, tmp_path: Path) -> None:
    config = agent_config(gobgpd, tmp_path, timers={"full_reconcile": 3600.0, "rib_check": 0.1})
    async with running(config) as daemon:
        await settled(daemon)
        reads = daemon.reconciler.stats.full_reads
        gobgpd.cli("global", "rib", "add", "-a", "ipv4", "10.9.9.0/24")
        await eventually(lambda: daemon.reconciler.stats.full_reads > reads, timeout=5, what="a re-read")
        assert await owned_prefixes(client) == {"10.1.100.0/24", "2001:db8:100::/64"}
        assert "10.9.9.0/24" in {str(r.prefix) for r in await client.list_paths(4)}
