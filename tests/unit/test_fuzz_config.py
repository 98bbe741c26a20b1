"""``ipvlan-bgp validate`` exits 0 or 2 and nothing else for any file (a small run of tests/fuzz/config.py;
the fault suite runs 10,000 files)."""

from __future__ import annotations

from tests.fuzz.config import fuzz


def test_300_generated_and_mutated_files_exit_0_or_2() -> None:
    result = fuzz(300, seed=7)
    assert result.crashes == [], result.crashes[0][1]
    assert result.valid > 0 and result.invalid > 0 and result.valid + result.invalid == 300
