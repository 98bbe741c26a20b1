"""The Reconciler against an in-memory gobgpd: idempotence, drift repair, broken streams, adoption."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig, parse_config
from agent.endpoints import Endpoint, IpvlanMode
from agent.gobgp import GobgpRejected, GobgpUnavailable
from agent.model import Attributes, LargeCommunity, Route
from agent.reconciler import Reconciler
from agent.routes import group_by_namespace

from ..fakes import FakeGobgp

OWNER = LargeCommunity(65001, 4242, 1)
OTHER = LargeCommunity(65001, 4242, 2)


def config(**extra: Any) -> AgentConfig:
    data: dict[str, Any] = {"uplinks": ["eth0"], "ownership_community": str(OWNER),
                            "networks": [{"prefix": "10.1.0.0/16", "advertise": "both"},
                                         {"prefix": "2001:db8:100::/64", "advertise": "host"}]}
    data.update(extra)
    return parse_config(data)


def endpoint(*addresses: str, netns: str = "/run/netns/c1") -> Endpoint:
    return Endpoint(netns, "eth0", 2, IpvlanMode.L3, "eth0", tuple(ipaddress.ip_interface(a) for a in addresses), True)


def many(n: int) -> Endpoint:
    return endpoint(*(f"10.1.{i // 250}.{i % 250 + 1}/16" for i in range(n)))


def route(prefix: str, owner: LargeCommunity = OWNER) -> Route:
    return Route(ipaddress.ip_network(prefix), None, Attributes(large_communities=(owner,)))


def held(fake: FakeGobgp) -> set[str]:
    return {str(p) for p in fake.owned()}


async def reconciled_twice(reconciler: Reconciler, fake: FakeGobgp, endpoints: list[Endpoint]) -> None:
    """Reconcile, then again: the second plan is empty and gobgpd sees no further write."""
    await reconciler.reconcile(group_by_namespace(endpoints))
    writes = fake.writes
    assert (await reconciler.reconcile(group_by_namespace(endpoints))).empty
    assert fake.writes == writes


async def test_idempotent_and_exact() -> None:
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, config())
    await reconciled_twice(reconciler, fake, [endpoint("10.1.0.2/16", "2001:db8:100::2/64")])
    assert held(fake) == {"10.1.0.2/32", "10.1.0.0/16", "2001:db8:100::2/128"}
    await reconciled_twice(reconciler, fake, [endpoint("10.1.0.3/16")])
    assert held(fake) == {"10.1.0.3/32", "10.1.0.0/16"}


async def test_adoption_after_restart_keeps_own_withdraws_stale_leaves_foreign() -> None:
    fake = FakeGobgp(OWNER)
    fake.rib.update({r.prefix: r for r in (route("10.1.0.2/32"), route("10.1.0.99/32"), route("10.1.0.0/16"),
                                           route("10.9.0.0/24", OTHER), route("10.1.0.7/32", OTHER))})
    reconciler = Reconciler(fake, config())
    plan = await reconciler.reconcile(group_by_namespace([endpoint("10.1.0.2/16")]))
    assert [str(r.prefix) for r in plan.withdraw] == ["10.1.0.99/32"] and plan.add == ()  # live paths untouched
    assert held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}
    assert {str(p) for p, r in fake.rib.items() if r.owned_by(OTHER)} == {"10.9.0.0/24", "10.1.0.7/32"}
    await reconciled_twice(reconciler, fake, [endpoint("10.1.0.2/16")])


async def test_drift_repaired_by_rib_check_and_full_read() -> None:
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, config())
    endpoints = [endpoint("10.1.0.2/16", "10.1.0.3/16")]
    await reconciled_twice(reconciler, fake, endpoints)
    fake.delete_behind_our_back(ipaddress.ip_network("10.1.0.2/32"))
    assert (await reconciler.reconcile(group_by_namespace(endpoints))).empty  # unseen until someone looks
    assert await reconciler.table_moved()
    reconciler.invalidate()
    await reconciled_twice(reconciler, fake, endpoints)
    assert held(fake) == {"10.1.0.2/32", "10.1.0.3/32", "10.1.0.0/16"}
    assert not await reconciler.table_moved()


@pytest.mark.parametrize("k", [0, 1, 2])
async def test_stream_broken_at_batch_k_is_repaired_by_the_next_pass(k: int) -> None:
    fake = FakeGobgp(OWNER, batch=10)
    reconciler = Reconciler(fake, config())
    endpoints = [many(35)]
    fake.drop_at_batch = k
    with pytest.raises(GobgpUnavailable):
        await reconciler.reconcile(group_by_namespace(endpoints))
    assert len(fake.owned()) == 10 * k  # the batches before k went in, like gobgpd
    assert reconciler.actual is None  # a failed apply forgets: only a fresh read tells the truth
    await reconciled_twice(reconciler, fake, endpoints)
    assert len(fake.owned()) == 36


async def test_rejected_write_changes_nothing_and_is_retried() -> None:
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, config())
    fake.reject = True
    with pytest.raises(GobgpRejected):
        await reconciler.reconcile(group_by_namespace([endpoint("10.1.0.2/16")]))
    assert fake.owned() == {} and reconciler.stats.failures == 1
    await reconciled_twice(reconciler, fake, [endpoint("10.1.0.2/16")])
    assert held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}


async def test_gobgpd_restart_pushes_everything_back() -> None:
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, config())
    await reconciled_twice(reconciler, fake, [endpoint("10.1.0.2/16")])
    fake.restart()
    reconciler.invalidate()  # what the daemon does on READY after LOST
    await reconciled_twice(reconciler, fake, [endpoint("10.1.0.2/16")])
    assert held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}


async def test_withdraw_all_removes_only_ours() -> None:
    fake = FakeGobgp(OWNER)
    fake.rib[ipaddress.ip_network("10.9.0.0/24")] = route("10.9.0.0/24", OTHER)
    reconciler = Reconciler(fake, config())
    await reconciler.reconcile(group_by_namespace([endpoint("10.1.0.2/16")]))
    assert await reconciler.withdraw_all() == 2
    assert fake.owned() == {} and len(fake.rib) == 1


addresses = st.lists(st.integers(1, 600), max_size=40).map(
    lambda ns: endpoint(*(f"10.1.{n // 250}.{n % 250 + 1}/16" for n in ns)))


@settings(max_examples=60, deadline=None)
@given(before=addresses, after=addresses, stale=st.lists(st.integers(1, 600), max_size=10), cap=st.integers(1, 50))
async def test_any_start_converges_in_one_pass_and_respects_the_cap(before: Endpoint, after: Endpoint,
                                                                    stale: list[int], cap: int) -> None:
    """The property test of routes.plan, with the real applying code as the oracle."""
    fake = FakeGobgp(OWNER, batch=7)
    for n in stale:
        fake.rib[ipaddress.ip_network(f"10.1.{n // 250}.{n % 250 + 1}/32")] = route(f"10.1.{n // 250}.{n % 250 + 1}/32")
    cfg = config(max_prefixes=cap)
    reconciler = Reconciler(fake, cfg)
    await reconciler.reconcile(group_by_namespace([before]))
    kept_before = dict(fake.owned())
    await reconciled_twice(reconciler, fake, [after])
    desired = reconciler.desired
    assert desired is not None
    owned = fake.owned()
    assert len(owned) <= cap
    assert all(desired.routes.get(p) == r for p, r in owned.items())  # nothing stale, nothing wrong
    if len(kept_before) <= cap:  # nothing that should stay is withdrawn to make room
        assert all(p in owned for p, r in kept_before.items() if desired.routes.get(p) == r)
    if len(desired.routes) <= cap:
        assert owned == desired.routes
