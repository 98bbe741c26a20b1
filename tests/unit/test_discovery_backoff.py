"""Discovery keeps going: resync backoff is bounded and resets, a failing rescan is survived."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent import discovery as discovery_module
from agent.discovery import Discovery, NamespaceWatcher, _resync_delay


def test_resync_delay_is_bounded_for_any_streak() -> None:
    assert _resync_delay(1) == 0.0
    assert [_resync_delay(n) for n in (2, 3)] == [0.04, 0.08]
    assert _resync_delay(10**6) == 1.0  # 2**1_000_000 would overflow a float


async def test_failures_reset_after_a_session_that_synced(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[int] = []

    def delay(failures: int) -> float:
        delays.append(failures)
        return 0.0

    monkeypatch.setattr(discovery_module, "_resync_delay", delay)
    watcher = NamespaceWatcher(None, lambda: None, None, 1 << 20, -1)  # type: ignore[arg-type]
    sessions = 0
    done = asyncio.Event()

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        watcher._session_synced = sessions % 3 == 0  # every third session gets as far as a full dump
        if sessions > 7:
            done.set()
            await asyncio.Event().wait()
        raise OSError(105, "No buffer space available")

    monkeypatch.setattr(watcher, "_session", session)
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    assert delays == [1, 2, 1, 2, 3, 1, 2]


async def test_a_failing_rescan_does_not_end_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    discovery = Discovery(["eth0"], [tmp_path], rescan_interval=0.01)
    monkeypatch.setattr(discovery, "_own", _Synced())
    scans = 0

    def failing_scan() -> None:
        nonlocal scans
        scans += 1
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(discovery, "_scan", failing_scan)
    task = asyncio.create_task(discovery.run())
    try:
        for _ in range(500):
            if scans >= 3:
                break
            await asyncio.sleep(0.01)
        assert scans >= 3 and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert os.path.isdir(tmp_path)


class _Synced:
    resyncs = 0
    view = None

    def __init__(self) -> None:
        self.synced = asyncio.Event()
        self.synced.set()

    async def run(self) -> None:
        await asyncio.Event().wait()


async def test_reconfigure_applies_the_rescan_interval(tmp_path: Path) -> None:
    discovery = Discovery(["eth0"], [tmp_path], rescan_interval=10.0)
    try:
        discovery.reconfigure(["eth1"], [tmp_path], 3.0)
        assert discovery._next_scan_in() == 3.0 and discovery.uplinks == ("eth1",)
    finally:
        await discovery.close()
