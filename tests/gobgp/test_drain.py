"""Graceful drain against a real gobgpd: GRACEFUL_SHUTDOWN (65535:0) on every path in gobgpd's RIB after
`ipvlan-bgp drain`, gone after `undrain` (read with GoBGP's own CLI, not the agent's reader)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from ipvlan_bgp_lab.gobgpd import Gobgpd

from agent.cli import main
from agent.daemon import running
from agent.wakeups import Reason

from ..helpers import eventually
from .test_daemon import agent_config

pytestmark = pytest.mark.gobgpd

GSHUT = (65535 << 16) | 0  # RFC 8326 GRACEFUL_SHUTDOWN as gobgpd's JSON writes a community


def communities_in_rib(gobgpd: Gobgpd) -> dict[str, set[int]]:
    """prefix -> the communities of its path, as `gobgp global rib -j` shows them."""
    found: dict[str, set[int]] = {}
    for family in ("ipv4", "ipv6"):
        for prefix, paths in json.loads(gobgpd.cli("global", "rib", "-a", family, "-j") or "{}").items():
            for path in paths:
                for attribute in path.get("attrs", []):
                    if attribute.get("type") == 8:  # COMMUNITIES
                        found.setdefault(prefix, set()).update(attribute["communities"])
                found.setdefault(prefix, set())
    return found


async def test_drain_and_undrain_in_gobgpds_rib(gobgpd: Gobgpd, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = agent_config(gobgpd, tmp_path, drain={"state_file": str(tmp_path / "drained")})
    socket = str(config.status.socket)
    async with running(config):
        assert set(communities_in_rib(gobgpd)) == {"10.1.100.0/24", "2001:db8:100::/64"}
        assert not any(GSHUT in found for found in communities_in_rib(gobgpd).values())
        assert await _cli("drain", "--socket", socket) == 0
        await eventually(lambda: all(GSHUT in found for found in communities_in_rib(gobgpd).values()),
                         what="GRACEFUL_SHUTDOWN on every path in gobgpd")
        assert communities_in_rib(gobgpd)["10.1.100.0/24"] == {GSHUT, (65001 << 16) | 100}
        capsys.readouterr()
        assert await _cli("status", "--socket", socket, "--json") == 1  # degraded: gobgpd has no BGP peer here
        assert json.loads(capsys.readouterr().out)["drain"]["drained"] is True
        await _cli("status", "--socket", socket)
        assert "DRAINED since" in capsys.readouterr().out
        assert await _cli("undrain", "--socket", socket) == 0
        await eventually(lambda: not any(GSHUT in found for found in communities_in_rib(gobgpd).values()),
                         what="GRACEFUL_SHUTDOWN gone from gobgpd")
        assert communities_in_rib(gobgpd)["10.1.100.0/24"] == {(65001 << 16) | 100}
        assert len(communities_in_rib(gobgpd)) == 2  # replaced in place: one path per prefix


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))  # the CLI runs its own event loop


def as_paths_in_rib(gobgpd: Gobgpd) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for prefix, paths in json.loads(gobgpd.cli("global", "rib", "-a", "ipv4", "-j") or "{}").items():
        for path in paths:
            found[prefix] = [asn for attribute in path.get("attrs", []) if attribute.get("type") == 2  # AS_PATH
                             for segment in attribute["as_paths"] for asn in segment["asns"]]
    return found


async def test_as_path_prepend_in_gobgpds_rib_and_exact_after_a_full_read(gobgpd: Gobgpd, tmp_path: Path) -> None:
    config = agent_config(gobgpd, tmp_path, drain={"state_file": str(tmp_path / "drained"), "as_path_prepend": 2})
    async with running(config) as daemon:
        assert as_paths_in_rib(gobgpd) == {"10.1.100.0/24": []}
        daemon.set_drained(True)
        await eventually(lambda: as_paths_in_rib(gobgpd) == {"10.1.100.0/24": [65001, 65001]},
                         what="gobgpd's AS twice on the drained path")
        # what gobgpd gives back reads as what the agent wrote: a full re-read sends nothing
        stats = daemon.reconciler.stats
        added, reads, passes = stats.added, stats.full_reads, stats.passes
        daemon.wakeups.post(Reason.FULL_READ)
        await eventually(lambda: stats.full_reads > reads and stats.passes > passes, what="a full re-read")
        assert stats.added == added
        daemon.set_drained(False)
        await eventually(lambda: as_paths_in_rib(gobgpd) == {"10.1.100.0/24": []}, what="AS_PATH gone again")
