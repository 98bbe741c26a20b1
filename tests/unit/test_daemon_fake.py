"""The daemon's loop, supervision and reload against in-memory gobgpd and discovery (no kernel, no gobgpd)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, parse_config
from agent.daemon import AgentFailed, Daemon, running
from agent.endpoints import Endpoint, IpvlanMode
from agent.model import Attributes, LargeCommunity, Route
from agent.systemd import notify

from ..fakes import FakeDiscovery, FakeGobgp
from ..helpers import eventually

OWNER = LargeCommunity(65001, 4242, 1)


def agent_config(tmp_path: Path, **extra: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "uplinks": ["eth0"], "ownership_community": str(OWNER),
        "networks": [{"prefix": "10.1.0.0/16", "advertise": "both"}],
        "status": {"socket": str(tmp_path / "agent.sock")}, "metrics": {"listen": ""},
        "timers": {"settle": 0.0},
    }
    data.update(extra)
    return parse_config(data)


def endpoint(*addresses: str) -> Endpoint:
    return Endpoint("/run/netns/c1", "eth0", 2, IpvlanMode.L3, "eth0",
                    tuple(ipaddress.ip_interface(a) for a in addresses), True)


def held(fake: FakeGobgp) -> set[str]:
    return {str(p) for p in fake.owned()}


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_converges_idempotently_and_follows_changes(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:
        assert held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}
        writes, passes = fake.writes, daemon.reconciler.stats.passes
        discovery.set(endpoint("10.1.0.2/16"))  # a change that changes nothing
        await eventually(lambda: daemon.reconciler.stats.passes > passes, what="second pass")
        assert fake.writes == writes
        discovery.set(endpoint("10.1.0.3/16"))
        await eventually(lambda: held(fake) == {"10.1.0.3/32", "10.1.0.0/16"}, what="change advertised")
        assert daemon.state.healthy and len(daemon.state.advertised) == 2
    assert held(fake) == {"10.1.0.3/32", "10.1.0.0/16"}  # on_shutdown = retain
    assert fake.closed and discovery.closed


async def test_shutdown_withdraw(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    async with running(agent_config(tmp_path, on_shutdown="withdraw"), speaker=fake, discovery=discovery):
        assert len(fake.owned()) == 2
    assert fake.owned() == {}


async def test_drift_repaired_by_the_rib_check(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    config = agent_config(tmp_path, timers={"settle": 0.0, "rib_check": 0.1})
    async with running(config, speaker=fake, discovery=discovery):
        fake.delete_behind_our_back(ipaddress.ip_network("10.1.0.2/32"))
        await eventually(lambda: held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}, what="drift repaired")


async def test_gobgpd_restart_pushes_everything_back(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:
        fake.restart()
        await eventually(lambda: held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}, what="re-push")
        assert daemon.state.gobgp_restarts == 1


async def test_reload_applies_live_fields(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    config = agent_config(tmp_path)
    async with running(config, speaker=fake, discovery=discovery) as daemon:
        new = agent_config(tmp_path, networks=[{"prefix": "10.1.0.0/16", "advertise": "host"}],
                           timers={"settle": 0.0, "netns_rescan": 3.0})
        assert daemon.reload(new)
        await eventually(lambda: held(fake) == {"10.1.0.2/32"}, what="aggregate withdrawn")
        assert discovery.rescan_interval == 3.0
        assert metric(daemon, "ipvlan_bgp_config_reloads_total", result="ok") == 1


@pytest.mark.parametrize("change", [
    {"ownership_community": "65001:4242:9"},
    {"gobgp": {"target": "127.0.0.1:1"}},
    {"status": {"socket": "/tmp/elsewhere.sock"}},
    {"metrics": {"listen": "127.0.0.1:1"}},
])
async def test_reload_refuses_restart_only_changes_whole(tmp_path: Path, change: dict[str, Any]) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    config = agent_config(tmp_path)
    async with running(config, speaker=fake, discovery=discovery) as daemon:
        new = agent_config(tmp_path, networks=[{"prefix": "10.1.0.0/16", "advertise": "host"}], **change)
        assert not daemon.reload(new)
        assert daemon.config is config  # the whole old config, the live parts included
        assert metric(daemon, "ipvlan_bgp_config_reloads_total", result="refused") == 1
        await asyncio.sleep(0.05)
        assert held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}


async def test_a_pass_that_raises_unexpectedly_is_retried(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:
        real_add = fake.add_paths
        calls = 0

        async def broken_once(routes: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("bug")
            await real_add(routes)

        fake.add_paths = broken_once  # type: ignore[method-assign]
        discovery.set(endpoint("10.1.0.3/16"))
        await eventually(lambda: held(fake) == {"10.1.0.3/32", "10.1.0.0/16"}, what="retried pass")
        assert metric(daemon, "ipvlan_bgp_reconcile_passes_total", result="error") == 1
        assert metric(daemon, "ipvlan_bgp_errors_total", kind="internal") == 1


async def test_a_task_that_raises_is_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.daemon.TASK_RESTART_FIRST", 0.01)
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    real_watch = fake.watch
    watches = 0

    async def watch_failing_once() -> Any:
        nonlocal watches
        watches += 1
        if watches == 1:
            raise RuntimeError("watch bug")
        async for event in real_watch():
            yield event

    fake.watch = watch_failing_once  # type: ignore[method-assign]
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:
        await eventually(lambda: metric(daemon, "ipvlan_bgp_task_restarts_total", task="gobgp-watch") == 1,
                         what="restart counted")
        fake.restart()
        await eventually(lambda: daemon.state.gobgp_restarts == 1, what="the restarted watch sees events")


async def test_a_task_that_cannot_restart_makes_the_agent_exit_non_zero(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    discovery.fail_with = PermissionError("gone")
    daemon = Daemon(agent_config(tmp_path), speaker=fake, discovery=discovery)
    with pytest.raises(AgentFailed, match="discovery"):
        await asyncio.wait_for(daemon.run(), 10)
    assert not daemon.state.healthy and "discovery" in daemon.state.unhealthy_reason
    assert metric(daemon, "ipvlan_bgp_healthy") == 0


def test_notify_with_a_bogus_socket_does_not_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for bogus in (str(tmp_path / "nobody-listens"), "@" + "x" * 200, "/proc/self/status", "relative"):
        monkeypatch.setenv("NOTIFY_SOCKET", bogus)
        assert notify("READY=1") is False


async def test_a_hung_gobgpd_does_not_stop_watchdog_pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def pings() -> int:
        count = 0
        while True:
            try:
                count += listener.recv(4096) == b"WATCHDOG=1"
            except BlockingIOError:
                return count

    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    try:
        async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:
            fake.hang()
            discovery.set(endpoint("10.1.0.3/16"))  # the pass now waits on gobgpd forever
            pings()
            try:
                seen = []
                for _ in range(40):  # 4 s: the last second is past any heartbeat allowance (2 s)
                    await asyncio.sleep(0.1)
                    seen.append(pings())
                assert sum(seen[-10:]) >= 5, seen
                assert daemon.reconciler.stats.passes == 1  # the pass is still stuck
            finally:
                fake.release()
            await eventually(lambda: held(fake) == {"10.1.0.3/32", "10.1.0.0/16"}, what="converged after")
    finally:
        listener.close()



async def test_a_rib_check_on_a_hung_gobgpd_does_not_stop_watchdog_pings(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the fault suite (gobgpd SIGSTOPped): with nothing changing, the periodic rib check is the call
    that waits on a frozen gobgpd; the pings must go on through it."""
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def pings() -> int:
        count = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                count += listener.recv(4096) == b"WATCHDOG=1"
        return count

    fake = FakeGobgp(OWNER)
    config = agent_config(tmp_path, timers={"settle": 0.0, "rib_check": 0.2})
    try:
        async with running(config, speaker=fake, discovery=FakeDiscovery([endpoint("10.1.0.2/16")])) as daemon:
            fake.hang()
            pings()
            try:
                seen = []
                for _ in range(40):
                    await asyncio.sleep(0.1)
                    seen.append(pings())
                assert sum(seen[-10:]) >= 5, seen
                assert daemon.reconciler.stats.passes == 1  # no pass since: the rib check is what waits
            finally:
                fake.release()
    finally:
        listener.close()


async def test_ready_status_and_stopping_reach_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    messages: list[bytes] = []

    def received() -> list[bytes]:
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(listener.recv(4096))
        return messages

    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    daemon = Daemon(agent_config(tmp_path), speaker=fake, discovery=discovery)  # no on_ready: as under systemd
    task = asyncio.create_task(daemon.run())
    try:
        await eventually(lambda: b"READY=1" in received(), timeout=10, what="READY=1")
        assert b"STATUS=in sync: 2 path(s)" in messages
        fake.restart()
        await eventually(lambda: any(m.startswith(b"STATUS=NOT HEALTHY") for m in received()), timeout=10,
                         what="unhealthy status")
        daemon.stop()
        await asyncio.wait_for(task, 10)
        assert received()[-1] == b"STOPPING=1"
    finally:
        daemon.stop()
        listener.close()


async def test_start_adopts_own_paths_withdraws_stale_leaves_foreign(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    other = LargeCommunity(65001, 4242, 2)
    for prefix, owner in (("10.1.0.2/32", OWNER), ("10.1.0.0/16", OWNER), ("10.1.0.99/32", OWNER),
                          ("10.9.0.0/24", other)):
        fake.rib[ipaddress.ip_network(prefix)] = Route(ipaddress.ip_network(prefix), None,
                                                       Attributes(large_communities=(owner,)))
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:
        assert held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}
        assert "10.9.0.0/24" in {str(p) for p in fake.rib}
        assert daemon.reconciler.stats.added == 0 and daemon.reconciler.stats.withdrawn == 1
        assert fake.paths_written == 1  # only the stale path: live ones are never withdrawn and re-added


async def test_held_back_neighbor_enabled_only_once_gobgpd_holds_the_whole_table(tmp_path: Path) -> None:
    fake = FakeGobgp(OWNER, batch=100)
    fake.hold_back()
    many = endpoint(*(f"10.1.{i // 250}.{i % 250 + 1}/16" for i in range(900)))  # 9 batches of 100
    async with running(agent_config(tmp_path), speaker=fake, discovery=FakeDiscovery([many])):
        await eventually(lambda: fake.enabled_with != [], what="neighbor enabled")
        assert fake.enabled_with == [901]  # with the whole table in
        fake.restart()  # a new gobgpd: empty, the neighbor held back again
        await eventually(lambda: len(fake.enabled_with) == 2, what="neighbor enabled after the restart")
        assert fake.enabled_with == [901, 901]


async def test_a_neighbor_an_operator_disabled_stays_down(tmp_path: Path) -> None:
    fake = FakeGobgp(OWNER)
    # `gobgp neighbor X disable` on a session that was up: admin-down, and gobgpd cleared both timestamps
    fake.peers = [dataclasses.replace(fake.peers[0], state="idle", uptime=None, admin_down=True,
                                      configured_admin_down=True)]
    config = agent_config(tmp_path, timers={"settle": 0.0, "rib_check": 0.1})
    async with running(config, speaker=fake, discovery=FakeDiscovery([endpoint("10.1.0.2/16")])):
        fake.restart()  # the agent re-pushes and looks for held-back neighbors again, periodically too
        await eventually(lambda: fake.peer_lists >= 3, what="the agent looking at the neighbors")
        assert fake.enabled_with == []
