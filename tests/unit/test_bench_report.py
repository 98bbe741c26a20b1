"""bench/report.py: the tables say "no" when a figure misses its target, and failed scenarios are listed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import report


def idle(percent: float) -> dict[str, object]:
    return {"endpoints": 1000, "seconds": 70.0, "full_reconcile_s": 60.0, "cpu_seconds": percent * 0.7,
            "cpu_percent": percent, "note": "n"}


def test_idle_verdict_follows_the_target() -> None:
    (row,) = report.results_table({"idle": idle(0.4)})[2:]
    assert row.endswith("| yes |")
    (row,) = report.results_table({"idle": idle(0.6)})[2:]
    assert row.endswith("| **no** |")


def test_a_failed_scenario_is_never_tabled() -> None:
    assert report.results_table({"idle": {"error": "RuntimeError: boom"}})[2:] == []
