"""Fixtures of the netns tier: a namespace directory and a Discovery watching it (uplink "lo")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.netns import delete_netns

from agent.discovery import Discovery


@pytest.fixture
def netns_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "netns"
    directory.mkdir()
    return directory


@pytest.fixture
async def discovery(netns_dir: Path) -> AsyncIterator[Discovery]:
    d = Discovery(["lo"], [netns_dir], rescan_interval=3600)
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(d.synced.wait(), 10)
    try:
        yield d
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for entry in netns_dir.iterdir():
            delete_netns(entry)
