from __future__ import annotations

import ipaddress

import pytest

from agent.endpoints import Endpoint, IpvlanMode
from agent.pacing import BURST, NamespacePacer


def endpoints(netns: str, n: int) -> tuple[Endpoint, ...]:
    address = ipaddress.ip_interface(f"10.1.{n // 250}.{n % 250}/32")
    return (Endpoint(netns, "eth0", 2, IpvlanMode.L3, "eth0", (address,), True),)


def test_a_burst_goes_at_once_then_a_busy_namespace_waits_its_turn_and_others_do_not() -> None:
    pacer = NamespacePacer(0.1)
    quiet = endpoints("q", 0)
    pacer.pace({"q": quiet, "b": endpoints("b", 0)}, 0.0)
    for n in range(1, BURST):  # the first turn was its appearance
        seen, due = pacer.pace({"q": quiet, "b": endpoints("b", n)}, 0.0)
        assert due is None
    last = seen["b"]
    seen, due = pacer.pace({"q": endpoints("q", 1), "b": endpoints("b", 99)}, 0.0)
    assert seen["b"] is last and due == pytest.approx(0.1)
    assert seen["q"] == endpoints("q", 1)  # another namespace's change is not held back
    seen, due = pacer.pace({"q": seen["q"], "b": endpoints("b", 100)}, 0.1)
    assert seen["b"] == endpoints("b", 100) and due is None


def test_a_namespace_that_is_gone_goes_at_once() -> None:
    pacer = NamespacePacer(0.1)
    for n in range(BURST + 1):
        pacer.pace({"b": endpoints("b", n)}, 0.0)
    seen, due = pacer.pace({}, 0.0)
    assert seen == {} and due is None


def test_unchanged_namespaces_are_handed_on_as_they_are_and_zero_means_no_pacing() -> None:
    pacer = NamespacePacer(0.0)
    by_namespace = {"q": endpoints("q", 0)}
    pacer.pace(by_namespace, 0.0)
    assert pacer.pace(by_namespace, 0.0)[0] is by_namespace
    for n in range(3 * BURST):
        assert pacer.pace({"q": endpoints("q", n)}, 0.0)[1] is None
