"""Keep bench/agent_bench.py from rotting: each scenario at toy size, no timing assertions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import agent_bench

pytestmark = pytest.mark.vm


async def test_latency_smoke() -> None:
    result = await agent_bench.bench_latency(3, rounds=2, others=(0, 20))
    for size in ("0", "20"):
        figures = result["by_others"][size]
        assert figures["rounds"] == 2
        for kind in agent_bench.SAMPLE_KINDS:
            assert figures[kind]["n"] == 6, kind


async def test_scale_smoke() -> None:
    result = await agent_bench.bench_scale(150)
    assert result["paths_in_gobgpd"] == 150 and result["paths_in_gobgpd_process"] == 150


async def test_churn_smoke() -> None:
    result = await agent_bench.bench_churn(rate=40, seconds=1.0, endpoints=4, pool=10)
    assert result["missing"] == 0 and result["stale"] == 0
    assert result["adds_written"] >= 15
    assert result["adds_advertised"] + result["adds_never_advertised"] == result["adds_written"]
    assert result["adds_never_advertised_still_present"] == 0


async def test_noisy_smoke() -> None:
    result = await agent_bench.bench_noisy(rate=40, seconds=1.0, events=2, endpoints=4, pool=10)
    assert result["quiet"]["agent_add"]["n"] == 2 and result["noisy"]["agent_add"]["n"] >= 1


async def test_idle_smoke() -> None:
    result = await agent_bench.bench_idle(20, 2.0, full_reconcile=1.0)
    # A full re-read falls inside the window, yet an idle agent sleeps: well under one core over it.
    assert 0 < result["cpu_seconds"] < 0.5 * result["seconds"], result
