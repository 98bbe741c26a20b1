"""The netlink parser raises nothing but NetlinkParseError on any bytes (a small run of tests/fuzz/netlink.py;
the fault suite runs a million inputs)."""

from __future__ import annotations

from tests.fuzz.netlink import fixture_datagrams, fuzz, parse_everything


def test_captured_kernel_datagrams_parse_cleanly() -> None:
    for datagram in fixture_datagrams():
        parse_everything(datagram)


def test_20000_random_and_mutated_inputs_raise_only_the_parse_error() -> None:
    result = fuzz(20_000, seed=11)
    assert result.inputs == 20_000
    assert result.crashes == [], result.crashes[0][1]
    assert 0 < result.parse_errors < result.inputs  # both paths are exercised: refused and parsed inputs
