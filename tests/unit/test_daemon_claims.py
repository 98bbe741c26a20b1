"""What the README claims about the daemon's loop, each shown against the in-memory gobgpd and discovery:
dampening (release timer, held-down status and metric, address changes are no flaps), the settle window,
the periodic full re-read and the cheap count check, SIGHUP and a second SIGTERM through ``run_daemon``,
and the systemd watchdog stopping when the loop is stuck or the event loop is blocked.

Where the claim is about time, the daemon's monotonic clock is a ``ManualClock`` that moves only when the
test says so, so no test waits for a timer to run out and none depends on the machine's speed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.daemon import Daemon, run_daemon, running
from agent.endpoints import Endpoint
from agent.model import Attributes, LargeCommunity
from agent.status import query

from ..fakes import FakeDiscovery, FakeGobgp
from ..helpers import eventually
from .test_daemon_fake import OWNER, agent_config, endpoint, held, metric

REPO = Path(__file__).resolve().parents[2]
OTHER = LargeCommunity(65001, 4242, 2)  # another API user's paths


class ManualClock:
    """Stands in for the daemon's ``time`` module: monotonic time passes only by ``advance``."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def perf_counter() -> float:
        return time.perf_counter()

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    manual = ManualClock()
    monkeypatch.setattr("agent.daemon.time", manual)
    monkeypatch.setattr("agent.wakeups.time", manual)
    return manual


async def next_pass(daemon: Daemon, discovery: FakeDiscovery, *endpoints: Endpoint) -> None:
    """Announce ``endpoints`` and wait until a pass has run and its metrics are observed."""
    passes = metric(daemon, "ipvlan_bgp_reconcile_passes_total", result="ok")
    discovery.set(*endpoints)
    await eventually(lambda: metric(daemon, "ipvlan_bgp_reconcile_passes_total", result="ok") > passes,
                     timeout=10, what="a pass")


# -- dampening in the daemon

async def test_a_held_down_endpoint_is_shown_and_released_by_its_timer(
        tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    config = agent_config(tmp_path, dampening={"max_flaps": 2, "window": 30.0, "hold_down": 0.2})
    ready = endpoint("10.1.0.2/16")
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([ready])
    async with running(config, speaker=fake, discovery=discovery) as daemon:
        # appeared ready (1), not ready (2), ready (3): more readiness changes than max_flaps within the window
        await next_pass(daemon, discovery, dataclasses.replace(ready, ready=False))
        await next_pass(daemon, discovery, ready)
        assert held(fake) == set()  # treated as absent: host route withdrawn, the aggregate has no user left
        assert daemon.state.held_down == 1
        assert metric(daemon, "ipvlan_bgp_endpoints_held_down") == 1
        status = await query(config.status.socket, "status")
        assert status["endpoints"] == {"total": 1, "ready": 1, "held_down": 1}
        assert "holding down flapping endpoint /run/netns/c1:eth0" in caplog.text

        # From here on no event at all: only the daemon's own release timer can bring it back.
        clock.advance(0.25)  # stable for longer than hold_down
        await eventually(lambda: held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}, timeout=10, what="release")
        await eventually(lambda: metric(daemon, "ipvlan_bgp_endpoints_held_down") == 0, timeout=10,
                         what="held-down metric back to 0")
        assert daemon.state.held_down == 0
        assert (await query(config.status.socket, "status"))["endpoints"]["held_down"] == 0


async def test_address_changes_are_not_flaps(tmp_path: Path, clock: ManualClock) -> None:
    config = agent_config(tmp_path, dampening={"max_flaps": 1, "window": 30.0, "hold_down": 30.0})
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    async with running(config, speaker=fake, discovery=discovery) as daemon:
        for last in range(3, 7):  # one readiness change so far (it appeared); max_flaps is 1
            await next_pass(daemon, discovery, endpoint(f"10.1.0.{last}/16", "10.1.1.1/16"))
            assert held(fake) == {f"10.1.0.{last}/32", "10.1.1.1/32", "10.1.0.0/16"}
            assert daemon.state.held_down == 0


# -- timers.settle

async def test_a_burst_within_the_settle_window_costs_one_pass(tmp_path: Path, clock: ManualClock) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    config = agent_config(tmp_path, timers={"settle": 1.0})  # the burst below takes well under a millisecond
    async with running(config, speaker=fake, discovery=discovery) as daemon:
        passes, written = daemon.reconciler.stats.passes, fake.paths_written
        # The clock stands still, so each change comes within the settle window after the first pass.
        for last in range(3, 13):
            discovery.set(endpoint(f"10.1.0.{last}/16"))
            for _ in range(5):  # the loop runs between two changes (it wakes up, and waits for the window)
                await asyncio.sleep(0)
        await eventually(lambda: held(fake) == {"10.1.0.12/32", "10.1.0.0/16"}, timeout=10, what="the last state")
        assert daemon.reconciler.stats.passes == passes + 1
        assert fake.paths_written == written + 2  # withdraw .2, add .12: nothing in between ever sent


async def test_the_first_change_after_a_quiet_period_is_handled_at_once(tmp_path: Path, clock: ManualClock) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    config = agent_config(tmp_path, timers={"settle": 5.0})  # the largest window allowed
    async with running(config, speaker=fake, discovery=discovery):
        clock.advance(5.0)  # quiet for a whole window
        discovery.set(endpoint("10.1.0.3/16"))
        # Waiting out the window would take 5 s; the bound is half of it, not a measurement.
        await eventually(lambda: held(fake) == {"10.1.0.3/32", "10.1.0.0/16"}, timeout=2.5,
                         what="the change, without a settle wait")


# -- timers.rib_check and timers.full_reconcile

async def test_the_rib_check_only_counts_while_nothing_moved(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    async with running(agent_config(tmp_path, timers={"settle": 0.0, "rib_check": 0.1}), speaker=fake,
                       discovery=discovery) as daemon:
        reads, writes, counts = fake.reads, fake.writes, fake.counts
        await eventually(lambda: fake.counts >= counts + 6, timeout=10, what="three rib checks")
        assert (fake.reads, fake.writes) == (reads, writes)  # two small RPCs each; no listing, no pass
        assert daemon.reconciler.stats.full_reads == 1  # the one at start


def replaced_by_a_foreign_path(fake: FakeGobgp) -> None:
    prefix = ipaddress.ip_network("10.1.0.2/32")
    fake.rib[prefix] = dataclasses.replace(fake.rib[prefix], attributes=Attributes(large_communities=(OTHER,)))


def deleted_while_a_foreign_path_appears(fake: FakeGobgp) -> None:
    fake.delete_behind_our_back(ipaddress.ip_network("10.1.0.2/32"))
    foreign = dataclasses.replace(fake.rib[ipaddress.ip_network("10.1.0.0/16")],
                                  prefix=ipaddress.ip_network("10.9.0.0/24"),
                                  attributes=Attributes(large_communities=(OTHER,)))
    fake.rib[foreign.prefix] = foreign


@pytest.mark.parametrize("drift", [replaced_by_a_foreign_path, deleted_while_a_foreign_path_appears])
async def test_the_full_reread_repairs_drift_the_counts_cannot_see(tmp_path: Path, clock: ManualClock,
                                                                   drift: Any) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    config = agent_config(tmp_path, timers={"settle": 0.0, "rib_check": 0.1})  # full_reconcile: 300 s
    async with running(config, speaker=fake, discovery=discovery) as daemon:
        reads, counts = fake.reads, fake.counts
        drift(fake)  # gobgpd's path counts stay the same
        await eventually(lambda: fake.counts >= counts + 6, timeout=10, what="three rib checks")
        assert fake.reads == reads and "10.1.0.2/32" not in held(fake)  # they saw nothing
        clock.advance(config.timers.full_reconcile)
        await eventually(lambda: held(fake) == {"10.1.0.2/32", "10.1.0.0/16"}, timeout=10, what="repair")
        assert daemon.reconciler.stats.full_reads == 2


async def test_a_reload_applies_new_drift_timers_at_once(tmp_path: Path, restore_logging: None) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:  # rib_check: 30 s
        counts = fake.counts
        assert daemon.reload(agent_config(tmp_path, timers={"settle": 0.0, "rib_check": 0.1}))
        # not after the 30 s the old timer still had to run
        await eventually(lambda: fake.counts >= counts + 4, timeout=10, what="rib checks by the new timer")


# -- SIGHUP and SIGTERM through run_daemon, as `ipvlan-bgp run` does

def config_text(tmp_path: Path, *, community: str = str(OWNER), target: str = "127.0.0.1:50051",
                status_socket: str = "", listen: str = "", networks: tuple[str, ...] = ("10.1.0.0/16",),
                on_shutdown: str = "retain") -> str:
    text = (f'uplinks = ["eth0"]\nownership_community = "{community}"\non_shutdown = "{on_shutdown}"\n'
            f'[gobgp]\ntarget = "{target}"\n'
            f'[status]\nsocket = "{status_socket or tmp_path / "agent.sock"}"\n'
            f'[metrics]\nlisten = "{listen}"\n'
            '[timers]\nsettle = 0.0\n')
    return text + "".join(f'[[networks]]\nprefix = "{n}"\naggregate_when = "always"\n' for n in networks)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """A reload calls setup_logging, which replaces the root logger's handlers (pytest's among them)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@contextlib.asynccontextmanager
async def agent_run(path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Daemon, FakeGobgp, FakeDiscovery]]:
    """``run_daemon`` on ``path`` with the fakes for edges, in sync; stopped on exit."""
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    monkeypatch.setattr("agent.wiring.gobgp_client", lambda config: fake)
    monkeypatch.setattr("agent.wiring.discovery", lambda config: discovery)
    daemons: list[Daemon] = []

    class Recorded(Daemon):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            daemons.append(self)

    monkeypatch.setattr("agent.daemon.Daemon", Recorded)
    ready = asyncio.Event()
    task = asyncio.create_task(run_daemon(load_config(path), path, on_ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield daemons[0], fake, discovery
    finally:
        if daemons:
            daemons[0].stop()
        await asyncio.wait_for(task, 10)


async def reload(daemon: Daemon, result: str) -> None:
    before = metric(daemon, "ipvlan_bgp_config_reloads_total", result=result)
    os.kill(os.getpid(), signal.SIGHUP)
    await eventually(lambda: metric(daemon, "ipvlan_bgp_config_reloads_total", result=result) > before,
                     timeout=10, what=f"a reload counted as {result}")


@pytest.mark.parametrize(("section", "change"), [
    ("gobgp", {"target": "127.0.0.1:1"}),
    ("status", {"status_socket": "/run/elsewhere.sock"}),
    ("metrics", {"listen": "127.0.0.1:1"}),
    ("ownership_community", {"community": "65001:4242:9"}),
])
async def test_sighup_refuses_a_restart_only_change_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture, restore_logging: None,
                                                          section: str, change: dict[str, str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path))
    async with agent_run(path, monkeypatch) as (daemon, fake, discovery):
        config = daemon.config
        path.write_text(config_text(tmp_path, networks=("10.1.0.0/16", "10.2.0.0/16"), **change))
        await reload(daemon, "refused")
        assert daemon.config is config
        assert f"reload refused, still running on the previous configuration: {section} change(s)" in caplog.text
        await next_pass(daemon, discovery, endpoint("10.1.0.3/16"))
        assert held(fake) == {"10.1.0.3/32", "10.1.0.0/16"}  # the live part (a new network) was not taken


async def test_sighup_refuses_an_invalid_file_then_applies_a_valid_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        restore_logging: None) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path))
    async with agent_run(path, monkeypatch) as (daemon, fake, discovery):
        config = daemon.config
        path.write_text("bogus_key = 1\n" + config_text(tmp_path, networks=("10.1.0.0/16", "10.2.0.0/16")))
        await reload(daemon, "invalid")
        assert daemon.config is config
        assert "reload refused" in caplog.text and "bogus_key" in caplog.text
        await next_pass(daemon, discovery, endpoint("10.1.0.3/16"))
        assert held(fake) == {"10.1.0.3/32", "10.1.0.0/16"}

        path.write_text(config_text(tmp_path, networks=("10.1.0.0/16", "10.2.0.0/16")))
        written = fake.paths_written
        await reload(daemon, "ok")
        await eventually(lambda: held(fake) == {"10.1.0.3/32", "10.1.0.0/16", "10.2.0.0/16"}, timeout=10,
                         what="the new network's aggregate")
        assert fake.paths_written == written + 1  # only what changed is sent


SECOND_SIGTERM_AGENT = """
import asyncio, ipaddress, sys
from pathlib import Path

import agent.wiring
from agent.config import load_config
from agent.daemon import run_daemon
from agent.endpoints import Endpoint, IpvlanMode
from agent.model import LargeCommunity
from tests.fakes import FakeDiscovery, FakeGobgp

config, marks = Path(sys.argv[1]), Path(sys.argv[2])
fake = FakeGobgp(LargeCommunity.parse(sys.argv[3]))
agent.wiring.gobgp_client = lambda _: fake
agent.wiring.discovery = lambda _: FakeDiscovery(
    [Endpoint("/run/netns/c1", "eth0", 2, IpvlanMode.L3, "eth0", (ipaddress.ip_interface("10.1.0.2/16"),), True)])
delete_paths = fake.delete_paths

async def withdrawing(routes):
    (marks / "withdrawing").touch()
    await delete_paths(routes)

fake.delete_paths = withdrawing

def ready():
    fake.hang()  # from now on gobgpd does not answer: the shutdown's withdrawal waits forever
    (marks / "ready").touch()

asyncio.run(run_daemon(load_config(config), on_ready=ready))
"""


async def test_a_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path, on_shutdown="withdraw"))
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SECOND_SIGTERM_AGENT, str(path), str(tmp_path), str(OWNER)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        await eventually(lambda: (tmp_path / "ready").exists() or proc.poll() is not None, timeout=60,
                         what="the agent in sync")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: (tmp_path / "withdrawing").exists(), timeout=10, what="the shutdown's withdrawal")
        assert proc.poll() is None  # stuck: gobgpd does not answer
        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: proc.poll() is not None, timeout=10, what="exit on the second SIGTERM")
        assert proc.returncode == 128 + signal.SIGTERM, log.read_text()
        assert "second SIGTERM: exiting now" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


# -- the systemd watchdog

class NotifyListener:
    """systemd's end of NOTIFY_SOCKET. A thread reads it, so each message's arrival time is right even
    while the agent's event loop (the test's too) is blocked."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.02)
        self.messages: list[tuple[float, bytes]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                self.messages.append((time.monotonic(), self.sock.recv(4096)))

    def pings(self, after: float = float("-inf")) -> list[float]:
        return [at for at, message in list(self.messages) if message == b"WATCHDOG=1" and at > after]

    def quiet_for(self, seconds: float) -> bool:
        pings = self.pings()
        return bool(pings) and time.monotonic() - pings[-1] >= seconds

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    """WatchdogSec=100 ms (a ping every 50 ms); the loop's heartbeat every 0.1 s, stale after 0.2 s."""
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setattr("agent.daemon.HEARTBEAT", 0.1)
    yield listener
    listener.close()


async def test_a_stuck_loop_stops_the_watchdog_pings(tmp_path: Path, watchdog: NotifyListener) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    stuck, unstick = asyncio.Event(), asyncio.Event()

    async def never_answering_wait(timeout: float) -> bool:  # the loop awaits something that never comes
        stuck.set()
        await unstick.wait()
        return False

    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:
        await eventually(lambda: len(watchdog.pings()) >= 3, timeout=10, what="pings while the loop runs")
        wait, daemon.wakeups.wait = daemon.wakeups.wait, never_answering_wait  # type: ignore[method-assign]
        try:
            await eventually(stuck.is_set, timeout=10, what="the loop stuck")
            # The event loop still runs (this test polls on it), the agent's loop does not: the pings stop.
            await eventually(lambda: watchdog.quiet_for(0.5), timeout=10, what="the pings to stop")
        finally:
            daemon.wakeups.wait = wait  # type: ignore[method-assign]
            unstick.set()
        resumed = time.monotonic()
        await eventually(lambda: bool(watchdog.pings(after=resumed)), timeout=10, what="pings again")


class BlockingDiscovery(FakeDiscovery):
    """A discovery whose snapshot blocks the event loop's thread (as a blocking call in the loop would)."""

    block_for = 0.0
    blocked: tuple[float, float] | None = None

    def snapshot(self) -> tuple[Endpoint, ...]:
        if self.block_for:
            started = time.monotonic()
            time.sleep(self.block_for)
            self.blocked, self.block_for = (started, time.monotonic()), 0.0
        return super().snapshot()


async def test_a_blocked_event_loop_sends_no_watchdog_pings(tmp_path: Path, watchdog: NotifyListener) -> None:
    fake, discovery = FakeGobgp(OWNER), BlockingDiscovery([endpoint("10.1.0.2/16")])
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery):
        await eventually(lambda: len(watchdog.pings()) >= 3, timeout=10, what="pings while the loop runs")
        discovery.block_for = 0.5  # ten ping intervals
        discovery.set(endpoint("10.1.0.3/16"))
        await eventually(lambda: discovery.blocked is not None, timeout=10, what="the blocked pass")
        assert discovery.blocked is not None
        started, ended = discovery.blocked
        # a ping sent just before the block may be read a little after it began
        assert [at for at in watchdog.pings(after=started + 0.1) if at < ended] == []
        await eventually(lambda: bool(watchdog.pings(after=ended)), timeout=10, what="pings after the block")
