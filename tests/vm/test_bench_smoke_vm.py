"""Keep bench/agent_bench.py from rotting: each scenario at toy size, no timing assertions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import agent_bench

pytestmark = pytest.mark.vm


async def test_latency_smoke() -> None:
    result = await agent_bench.bench_latency(5)
    assert result["advertise"]["n"] == 5 and result["baseline_addpath"]["n"] == 5


async def test_scale_smoke() -> None:
    result = await agent_bench.bench_scale(150)
    assert result["paths_in_gobgpd"] == 150


async def test_churn_smoke() -> None:
    result = await agent_bench.bench_churn(rate=40, seconds=1.0, endpoints=4)
    assert result["missing"] == 0 and result["stale"] == 0


async def test_idle_smoke() -> None:
    result = await agent_bench.bench_idle(20, 1.0)
    # An idle agent sleeps: well under one core over the window (a busy loop would use all of it).
    assert 0 <= result["cpu_seconds"] < 0.5 * result["seconds"], result
