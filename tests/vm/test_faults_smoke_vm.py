"""Keep bench/faults.py working: each fault case at toy size, judged by its own pass condition (exactness,
no withdrawal, no leak), never by a time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import faults

pytestmark = pytest.mark.vm


def passed(case: dict[str, object]) -> bool:
    print(case)  # the figures, in the guest's captured output when a case fails
    return bool(case["passed"])


async def test_kills_under_churn_smoke() -> None:
    async with faults.rack() as lab:
        assert passed(await faults.case_gobgpd_kill(lab, kills=1, rate=20, seed=1))
        assert passed(await faults.case_agent_kill(lab, kills=1, rate=20, seed=1))


async def test_gobgpd_freeze_smoke() -> None:
    assert passed(await faults.case_gobgpd_freeze(seconds=8.0, watchdog_sec=4.0, endpoints=5, rpc_timeout=2.0))


async def test_burst_smoke() -> None:
    assert passed(await faults.case_burst(300, endpoints=4))


async def test_netns_cycle_smoke() -> None:
    assert passed(await faults.case_netns_cycle(total=6, batch=3))


async def test_hostile_smoke() -> None:
    assert passed(await faults.case_hostile(addresses=150, latency_samples=2, victims=3, quota=20, cap=100))
