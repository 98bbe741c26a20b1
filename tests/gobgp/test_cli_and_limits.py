"""`plan` (dry run) and `max_prefixes` refusals through a running agent; a second SIGTERM exits at once."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from ipvlan_bgp_lab.gobgpd import Gobgpd, free_port

from agent.gobgp import GobgpClient

from .test_operations import CLI, REPO, Agent, agent_factory, write_config

pytestmark = pytest.mark.gobgpd
__all__ = ["agent_factory"]  # the fixture, shared with test_operations


async def owned_prefixes(client: GobgpClient) -> set[str]:
    return {str(r.prefix) for r in await client.list_owned_paths(4)}


async def test_plan_is_a_dry_run_and_shows_refusals(gobgpd: Gobgpd, client: GobgpClient, tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", gobgpd, extra="max_prefixes = 1")
    out = subprocess.run([*CLI, "plan", str(config)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [line.split(None, 2) for line in out.stdout.splitlines()[1:-1]]
    # aggregates with aggregate_when = "always": the cap keeps the first, refuses the second
    assert rows == [["+", "10.1.100.0/24", "network 10.1.100.0/24"],
                    ["!", "10.1.200.0/24", "refused: max_prefixes (network 10.1.200.0/24)"]]
    assert out.stdout.splitlines()[-1] == "1 to add, 0 to withdraw, 0 unchanged (dry run: nothing sent)"
    assert await owned_prefixes(client) == set()  # dry run


async def test_max_prefixes_refusals_in_gobgpd_status_and_metrics(gobgpd: Gobgpd, client: GobgpClient,
                                                                   tmp_path: Path, agent_factory: list[Agent]) -> None:
    port = free_port()
    agent = Agent(write_config(tmp_path / "agent.toml", gobgpd, metrics_port=port, extra="max_prefixes = 1"))
    agent_factory.append(agent)
    agent.expect("READY=1")
    assert await owned_prefixes(client) == {"10.1.100.0/24"}
    status = json.loads(agent.cli("status", "--json").stdout)
    assert status["prefixes"]["advertised"] == 1
    assert status["prefixes"]["refused_max_prefixes"] == ["10.1.200.0/24"]
    assert "1 refused (max_prefixes)" in agent.cli("status").stdout
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'ipvlan_bgp_prefixes_refused{reason="max_prefixes"} 1.0' in metrics
    assert 'ipvlan_bgp_prefix_refusals_total{reason="max_prefixes"} 1.0' in metrics
    plan = agent.cli("plan")
    assert "10.1.200.0/24  refused: max_prefixes" in plan.stdout
    assert "0 to add, 0 to withdraw, 1 unchanged" in plan.stdout


def test_second_sigterm_exits_at_once(tmp_path: Path, agent_factory: list[Agent]) -> None:
    """A "gobgpd" that accepts connections and never answers: the agent's pass hangs in its RPC (deadline
    40 s here), so the first SIGTERM cannot finish the shutdown; the second ends the process at once."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    absent = Gobgpd("", tmp_path / "never-started")  # only its target is used
    absent.port = hung.getsockname()[1]
    try:
        config = write_config(tmp_path / "agent.toml", absent, extra='on_shutdown = "withdraw"')
        config.write_text(config.read_text().replace("[gobgp]\n", "[gobgp]\nrpc_timeout = 40\n"))
        agent = Agent(config)
        agent_factory.append(agent)
        deadline = time.monotonic() + 60
        while "discovery synced" not in agent.log.read_text():  # its first pass is now stuck on gobgpd
            assert agent.proc.poll() is None and time.monotonic() < deadline, agent.log.read_text()
            time.sleep(0.1)
        agent.proc.send_signal(signal.SIGTERM)
        while "SIGTERM: shutting down" not in agent.log.read_text():
            assert agent.proc.poll() is None and time.monotonic() < deadline, agent.log.read_text()
            time.sleep(0.05)
        assert agent.proc.poll() is None, "the first SIGTERM already ended it: this test proves nothing"
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(10) == 128 + signal.SIGTERM, agent.log.read_text()
        assert "second SIGTERM: exiting now" in agent.log.read_text()
    finally:
        hung.close()
