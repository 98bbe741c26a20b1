"""Fixtures of the netns tier: a namespace directory and Discovery instances watching it (uplink "lo")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from ipvlan_bgp_lab.netns import delete_netns

from agent.discovery import Discovery

from ..helpers import stop_tasks


@pytest.fixture
def netns_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "netns"
    directory.mkdir()
    return directory


@pytest.fixture
async def discovery_factory(netns_dir: Path) -> AsyncIterator[Callable[..., Discovery]]:
    """Start Discovery instances (uplinks, rescan interval, directories); all stopped, and any crash of theirs
    raised, at teardown."""
    tasks: list[asyncio.Task[None]] = []

    def start(uplinks: list[str], rescan_interval: float = 3600, dirs: list[Path] | None = None) -> Discovery:
        d = Discovery(uplinks, dirs or [netns_dir], rescan_interval=rescan_interval)
        tasks.append(asyncio.create_task(d.run(), name=f"discovery {uplinks}"))
        return d

    try:
        yield start
    finally:
        try:
            await stop_tasks(*tasks)
        finally:
            for entry in netns_dir.iterdir():
                delete_netns(entry)


@pytest.fixture
async def discovery(discovery_factory: Callable[..., Discovery]) -> Discovery:
    d = discovery_factory(["lo"])
    await asyncio.wait_for(d.synced.wait(), 10)
    return d


