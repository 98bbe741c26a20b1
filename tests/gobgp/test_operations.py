"""Operations: systemd units and the notify protocol, metrics, status/routes CLI, SIGHUP reload."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.gobgpd import Gobgpd, free_port

from agent.gobgp import GobgpClient

from .conftest import OWNER

pytestmark = pytest.mark.gobgpd
REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "agent.cli"]


def write_config(path: Path, gobgpd: Gobgpd, metrics_port: int = 0, community: str = "65001:100",
                 extra: str = "") -> Path:
    path.write_text(f"""
uplinks = ["lo"]
ownership_community = "{OWNER}"
netns_dirs = ["{path.parent / 'netns'}"]
{extra}
[gobgp]
target = "{gobgpd.target}"
[status]
socket = "{path.parent / 'agent.sock'}"
[metrics]
listen = "{f'127.0.0.1:{metrics_port}' if metrics_port else ''}"
[[networks]]
prefix = "10.1.100.0/24"
aggregate_when = "always"
communities = ["{community}"]
[[networks]]
prefix = "10.1.200.0/24"
aggregate_when = "always"
""")
    return path


@pytest.mark.parametrize("unit", ["ipvlan-bgp-agent.service"])  # gobgpd's drop-in: tests/packaging/test_deb.py
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    text = (REPO / "config" / unit).read_text()
    # verify checks that executables exist: point it at this checkout's
    text = text.replace("/opt/ipvlan-bgp-agent/bin/ipvlan-bgp", str(Path(sys.executable).parent / "ipvlan-bgp"))
    copy = tmp_path / unit
    copy.write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if unit in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


class Agent:
    """`ipvlan-bgp run` as a real process, with a fake systemd notify socket."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = config.parent / "agent.log"
        self.notify_path = config.parent / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(30)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **(env or {})}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*CLI, "run", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=REPO)

    def expect(self, message: str) -> list[str]:
        seen = []
        while True:
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"no {message!r} from the agent; got {seen}\n{self.log.read_text()}") from None
            seen.append(data)
            if message in data.split("\n"):
                return seen

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args, str(self.config)], capture_output=True, text=True, cwd=REPO, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.notify.close()


@pytest.fixture
def agent_factory() -> Iterator[list[Agent]]:
    agents: list[Agent] = []
    yield agents
    for agent in agents:
        agent.stop()


def test_notify_ready_watchdog_stopping(gobgpd: Gobgpd, tmp_path: Path, agent_factory: list[Agent]) -> None:
    agent = Agent(write_config(tmp_path / "agent.toml", gobgpd), env={"WATCHDOG_USEC": "400000"})
    agent_factory.append(agent)
    agent.expect("READY=1")  # only after the first successful reconcile ...
    assert "in sync with gobgpd" in agent.log.read_text()
    agent.expect("WATCHDOG=1")  # ... then pings from the loop, every half WatchdogSec
    agent.expect("WATCHDOG=1")
    agent.proc.send_signal(signal.SIGTERM)
    agent.expect("STOPPING=1")
    assert agent.proc.wait(30) == 0


def test_status_routes_and_metrics(gobgpd: Gobgpd, tmp_path: Path, agent_factory: list[Agent]) -> None:
    port = free_port()
    agent = Agent(write_config(tmp_path / "agent.toml", gobgpd, metrics_port=port))
    agent_factory.append(agent)
    agent.expect("READY=1")

    out = agent.cli("status")  # in sync, but this gobgpd has no neighbour: nothing reaches a router
    assert out.returncode == 1, out.stderr
    assert "agent:      DEGRADED: no Established BGP peer" in out.stdout and "reachable" in out.stdout
    assert "peers:      none configured in gobgpd" in out.stdout
    status = json.loads(agent.cli("status", "--json").stdout)
    assert status["healthy"] and status["prefixes"]["advertised"] == 2 and status["gobgpd"]["peers"] == []
    assert status["state"] == "degraded" and status["missing_uplinks"] == []
    # --socket: no configuration needed (nor read)
    by_socket = subprocess.run([*CLI, "status", "--json", "--socket", str(tmp_path / "agent.sock"),
                                str(tmp_path / "no-such.toml")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert by_socket.returncode == 1 and json.loads(by_socket.stdout)["state"] == "degraded", by_socket.stderr

    table = agent.cli("routes")
    assert table.returncode == 0
    assert "10.1.100.0/24" in table.stdout and "65001:100" in table.stdout and str(OWNER) in table.stdout
    routes = json.loads(agent.cli("routes", "--json").stdout)
    assert [r["prefix"] for r in routes] == ["10.1.100.0/24", "10.1.200.0/24"]
    assert routes[0]["sources"] == ["network 10.1.100.0/24"] and routes[0]["next_hop"] == "unspecified"
    # ... and GoBGP's own CLI shows the same paths with the ownership community
    assert str(OWNER) in gobgpd.cli("global", "rib", "-a", "ipv4")

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'ipvlan_bgp_prefixes_advertised{family="ipv4",kind="aggregate"} 2.0' in metrics
    assert "ipvlan_bgp_gobgpd_reachable 1.0" in metrics
    assert 'ipvlan_bgp_reconcile_passes_total{result="ok"}' in metrics
    assert "ipvlan_bgp_reconcile_duration_seconds_bucket" in metrics
    assert 'ipvlan_bgp_build_info{gobgp_api="v3",version="' in metrics and "_created" not in metrics
    assert 'ipvlan_bgp_errors_total{kind="gobgpd_unavailable"} 0.0' in metrics
    success = next(line for line in metrics.splitlines()
                   if line.startswith("ipvlan_bgp_last_reconcile_success_timestamp_seconds "))
    assert abs(float(success.split()[1]) - time.time()) < 600
    assert os.stat(tmp_path / "agent.sock").st_mode & 0o777 == 0o600


def test_unreachable_and_unhealthy_exit_codes(gobgpd: Gobgpd, tmp_path: Path, agent_factory: list[Agent]) -> None:
    config = write_config(tmp_path / "agent.toml", gobgpd)
    assert subprocess.run([*CLI, "status", str(config)], capture_output=True, cwd=REPO).returncode == 3
    agent = Agent(config)
    agent_factory.append(agent)
    agent.expect("READY=1")
    gobgpd.kill()
    deadline = time.monotonic() + 30
    while "UNREACHABLE" not in (out := agent.cli("status")).stdout:
        assert time.monotonic() < deadline, out.stdout + out.stderr
        time.sleep(0.1)
    assert out.returncode == 1 and "agent:      UNHEALTHY: " in out.stdout  # lost gobgpd, or a pass failed


async def test_reload_applies_only_the_difference(gobgpd: Gobgpd, tmp_path: Path,
                                                  agent_factory: list[Agent]) -> None:
    port = free_port()
    config = write_config(tmp_path / "agent.toml", gobgpd, metrics_port=port)
    agent = Agent(config)
    agent_factory.append(agent)
    agent.expect("READY=1")
    async with GobgpClient(gobgpd.target, OWNER) as client:
        before = {str(r.prefix): r for r in await client.list_owned_paths(4)}

        config.write_text(config.read_text().replace("max_prefixes", "x") + "\nbogus_key = 1\n")
        agent.proc.send_signal(signal.SIGHUP)
        agent.expect("READY=1")
        assert "reload refused" in agent.log.read_text() and "bogus_key" in agent.log.read_text()
        assert {str(r.prefix): r for r in await client.list_owned_paths(4)} == before

        write_config(config, gobgpd, metrics_port=port, community="65001:999")
        agent.proc.send_signal(signal.SIGHUP)
        agent.expect("READY=1")
        deadline = time.monotonic() + 30
        while True:
            after = {str(r.prefix): r for r in await client.list_owned_paths(4)}
            if str(after["10.1.100.0/24"].attributes.communities[0]) == "65001:999":
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert after["10.1.200.0/24"] == before["10.1.200.0/24"]
    status = json.loads(agent.cli("status", "--json").stdout)
    assert status["healthy"]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for result, count in (("invalid", 1), ("ok", 1), ("refused", 0)):
        assert f'ipvlan_bgp_config_reloads_total{{result="{result}"}} {count}.0' in metrics
    log = agent.log.read_text()
    assert log.count("advertised 10.1.100.0/24") == 2 and log.count("advertised 10.1.200.0/24") == 1


def test_status_shows_peers_and_is_healthy_with_an_established_one(tmp_path: Path,
                                                                  agent_factory: list[Agent]) -> None:
    from .test_export_policy import host_config_peering_with, tor_config

    bgp_port = free_port()
    with Gobgpd(tor_config(bgp_port), tmp_path / "tor"), \
            Gobgpd(host_config_peering_with(bgp_port), tmp_path / "host") as host:
        config = write_config(tmp_path / "agent.toml", host)
        config.write_text(config.read_text().replace('uplinks = ["lo"]', 'uplinks = ["lo", "no-such-uplink0"]'))
        agent = Agent(config)
        agent_factory.append(agent)
        agent.expect("READY=1")
        deadline = time.monotonic() + 60
        # the shipped export policy lets 10.1.100.0/24 out, not 10.1.200.0/24: one prefix sent
        while (out := agent.cli("status")).returncode != 0 or " 1     " not in out.stdout:
            assert time.monotonic() < deadline, out.stdout + out.stderr
            time.sleep(0.2)
        assert "agent:      healthy" in out.stdout
        header, row = [line.split() for line in out.stdout.splitlines() if line.startswith("  ")]
        assert header == ["PEER", "AS", "STATE", "UP", "SENT", "ACCEPTED"]
        assert row[:3] == ["127.0.0.1", "AS65000", "established"] and row[4:] == ["1", "0"], out.stdout
        assert row[3].startswith("00:0"), out.stdout  # up for seconds, not since 1970
        assert "WARNING: uplink no-such-uplink0 does not exist in this host" in out.stdout
        peer = json.loads(agent.cli("status", "--json").stdout)["gobgpd"]["peers"][0]
        assert peer["state"] == "established" and peer["prefixes_advertised"] == 1 and 0 <= peer["uptime_s"] < 600
        assert "uplink no-such-uplink0 does not exist in this host" in agent.log.read_text()


def test_json_logs_under_journald_carry_priority_and_fields(gobgpd: Gobgpd, tmp_path: Path,
                                                            agent_factory: list[Agent]) -> None:
    config = write_config(tmp_path / "agent.toml", gobgpd, extra='[log]\nformat = "json"')
    agent = Agent(config, env={"JOURNAL_STREAM": "8:12345"})  # what systemd sets for a journal stdout/stderr
    agent_factory.append(agent)
    agent.expect("READY=1")
    lines = agent.log.read_text().splitlines()
    assert lines and all(line[:3] in ("<2>", "<3>", "<4>", "<6>", "<7>") for line in lines), lines
    entries = [json.loads(line[3:]) for line in lines]
    advertised = next(e for e in entries if e["msg"].startswith("advertised 10.1.100.0/24"))
    assert lines[entries.index(advertised)].startswith("<6>")
    assert advertised["prefix"] == "10.1.100.0/24" and advertised["sources"] == ["network 10.1.100.0/24"]
