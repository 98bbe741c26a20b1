"""Keep the benchmark code from rotting: a tiny run, no timing assertions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ipvlan_bgp_lab.gobgpd import Gobgpd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gobgp_baseline

pytestmark = pytest.mark.gobgpd


async def test_baseline_smoke(gobgpd: Gobgpd) -> None:
    result = await gobgp_baseline.measure(gobgpd.target, 50)
    assert result["paths"] == 50
    assert result["addpath_unary_paths_per_s"] > 0 and result["addpathstream_paths_per_s"] > 0
