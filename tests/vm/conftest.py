"""Fixtures for the vm tier: a dummy uplink per test and a private directory of container namespaces."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.containers import netlink_in
from ipvlan_bgp_lab.netns import delete_netns
from pyroute2 import AsyncIPRoute

from agent.discovery import Discovery

from ..helpers import eventually, stop_tasks

__all__ = ["eventually", "unique"]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@pytest.fixture
def netns_dir() -> Iterator[Path]:
    base = Path(os.environ.get("IBGP_GUEST_TMP", "/tmp"))
    directory = base / unique("netns-")
    directory.mkdir()
    try:
        yield directory
    finally:
        for entry in directory.iterdir():
            delete_netns(entry)
        directory.rmdir()


@pytest.fixture
async def host() -> AsyncIterator[AsyncIPRoute]:
    ipr = await netlink_in(None)
    try:
        yield ipr
    finally:
        ipr.close()


@pytest.fixture
async def uplink(host: AsyncIPRoute) -> AsyncIterator[str]:
    """A dummy interface standing in for the host's eth0 (unique per test)."""
    name = unique("up")
    await host.link("add", ifname=name, kind="dummy")
    (index,) = await host.link_lookup(ifname=name)
    await host.link("set", index=index, state="up")
    try:
        yield name
    finally:
        await host.link("del", index=index)


@pytest.fixture
async def discovery_factory() -> AsyncIterator[Callable[..., Discovery]]:
    running: list[tuple[Discovery, asyncio.Task[None]]] = []

    def start(uplinks: list[str], netns_dir: Path, **kwargs: object) -> Discovery:
        d = Discovery(uplinks, [netns_dir], rescan_interval=3600, **kwargs)  # type: ignore[arg-type]
        running.append((d, asyncio.create_task(d.run())))
        return d

    yield start
    await stop_tasks(*(task for _, task in running))
