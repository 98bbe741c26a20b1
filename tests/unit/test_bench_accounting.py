"""The benchmark's own arithmetic: churn accounts for every add it wrote, and the latency verdict compares
each percentile with the same percentile of the floor."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import agent_bench


def churn_with(adds: list[tuple[str, float]], dels: list[tuple[str, float]]) -> agent_bench.Churn:
    churn = agent_bench.Churn.__new__(agent_bench.Churn)  # no namespace: only the bookkeeping is under test
    churn.adds, churn.dels, churn.started = adds, dels, 0.0
    churn.present = collections.deque()
    return churn


def watch_with(seen: list[tuple[float, str, bool]]) -> agent_bench.RibWatch:
    watch = agent_bench.RibWatch("unused")
    watch.seen = seen
    return watch


def test_every_add_is_accounted_for() -> None:
    churn = churn_with(
        adds=[("10.16.0.1", 1.0), ("10.16.0.2", 2.0), ("10.16.0.3", 3.0), ("10.16.0.4", 4.0)],
        dels=[("10.16.0.2", 2.5)],
    )
    watch = watch_with([
        (0.5, "10.16.0.1/32", False),  # before its write: cannot be this write's add
        (1.5, "10.16.0.1/32", False),
        (3.5, "10.16.0.3/32", False),
    ])
    result = churn.account(watch)
    assert result["adds_written"] == 4
    assert result["adds_advertised"] == 2
    assert result["adds_never_advertised_deleted_first"] == 1  # .2: deleted before the agent advertised it
    assert result["adds_never_advertised_still_present"] == 1  # .4: never advertised at all
    assert result["adds_never_advertised"] == 2
    assert result["add_lag"]["p50_ms"] == 500.0


def test_withdraws_are_matched_only_for_advertised_addresses() -> None:
    churn = churn_with(adds=[("10.16.0.1", 1.0), ("10.16.0.2", 1.0)], dels=[("10.16.0.1", 2.0), ("10.16.0.2", 2.0)])
    watch = watch_with([(1.2, "10.16.0.1/32", False), (2.3, "10.16.0.1/32", True)])
    result = churn.account(watch)
    assert result["withdraw_lag"]["n"] == 1 and result["withdraws_missing"] == 0
    assert abs(result["withdraw_lag"]["p50_ms"] - 300.0) < 1e-6


def test_verdict_compares_like_percentiles_per_round() -> None:
    slow, fast = [0.1] * 97 + [1.0] * 3, [0.05] * 97 + [0.2] * 3
    round_ = {kind: fast for kind in agent_bench.SAMPLE_KINDS} | {"agent_add": slow}
    result = agent_bench.judge([round_, round_])
    assert result["agent_add_p50_vs_floor"]["all"] == 2.0
    assert result["agent_add_p99_vs_floor"]["all"] == 5.0
    assert result["agent_add_p99_vs_floor"]["min"] == result["agent_add_p99_vs_floor"]["max"] == 5.0
    assert result["agent_add"]["n"] == 200 and result["rounds"] == 2
    assert result["round_spread"]["agent_add"]["p99_ms"]["max"] == 1000.0
