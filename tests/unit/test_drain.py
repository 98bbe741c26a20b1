"""Graceful drain (RFC 8326) against the in-memory gobgpd: every path re-announced with GRACEFUL_SHUTDOWN,
withdrawn after drain.withdraw_after, restored by undrain, kept across a restart of the agent, exact under
the incremental reconciler."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import AgentConfig, parse_config
from agent.daemon import Daemon, running
from agent.drain import GRACEFUL_SHUTDOWN, Drain, load_drain
from agent.endpoints import Endpoint, IpvlanMode
from agent.model import Community, LargeCommunity
from agent.reconciler import Reconciler
from agent.status import query

from ..fakes import FakeDiscovery, FakeGobgp
from ..helpers import eventually

OWNER = LargeCommunity(65001, 4242, 1)


def agent_config(tmp_path: Path, **drain: Any) -> AgentConfig:
    return parse_config({
        "uplinks": ["eth0"], "ownership_community": str(OWNER),
        "networks": [{"prefix": "10.1.0.0/16", "advertise": "both", "communities": ["65001:100"]}],
        "status": {"socket": str(tmp_path / "agent.sock")}, "metrics": {"listen": ""},
        "timers": {"settle": 0.0, "namespace_interval": 0.0},
        "drain": {"state_file": str(tmp_path / "state" / "drained"), **drain},
    })


def endpoint(*addresses: str, netns: str = "/run/netns/c1") -> Endpoint:
    return Endpoint(netns, "eth0", 2, IpvlanMode.L3, "eth0", tuple(ipaddress.ip_interface(a) for a in addresses),
                    True)


def communities(fake: FakeGobgp) -> dict[str, tuple[Community, ...]]:
    return {str(p): r.attributes.communities for p, r in fake.rib.items() if r.owned_by(OWNER)}


def gauge(daemon: Daemon) -> float:
    return daemon.metrics.registry.get_sample_value("ipvlan_bgp_drained") or 0.0


async def test_drain_marks_every_path_and_undrain_restores_them(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    normal = (Community(65001, 100),)
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:
        assert communities(fake) == {"10.1.0.2/32": normal, "10.1.0.0/16": normal}
        socket = daemon.config.status.socket
        reply = await query(socket, "drain")
        assert reply["drained"] and reply["persisted"] and reply["withdraw_at"] is None
        drained = (Community(65001, 100), GRACEFUL_SHUTDOWN)
        await eventually(lambda: set(communities(fake).values()) == {drained}, what="GRACEFUL_SHUTDOWN on every path")
        assert gauge(daemon) == 1 and (await query(socket, "status"))["drain"]["drained"]
        # a change while drained: the new path carries it too (the incremental pass keeps the drain)
        discovery.set(endpoint("10.1.0.2/16"), endpoint("10.1.0.3/16", netns="/run/netns/c2"))
        await eventually(lambda: communities(fake).get("10.1.0.3/32") == drained, what="new path drained")
        assert (await query(socket, "drain"))["since"] == reply["since"]  # idempotent
        assert not (await query(socket, "undrain"))["drained"]
        await eventually(lambda: set(communities(fake).values()) == {normal}, what="full preference again")
        assert gauge(daemon) == 0 and not (tmp_path / "state" / "drained").exists()
        assert len(communities(fake)) == 3


async def test_withdraw_after_takes_every_path_away_and_undrain_brings_them_back(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    async with running(agent_config(tmp_path, withdraw_after=0.3), speaker=fake, discovery=discovery) as daemon:
        reply = await query(daemon.config.status.socket, "drain")
        assert reply["withdraw_at"] == pytest.approx(reply["since"] + 0.3)
        await eventually(lambda: not communities(fake), what="every path withdrawn")
        assert (await query(daemon.config.status.socket, "status"))["drain"]["withdrawn"]
        await query(daemon.config.status.socket, "undrain")
        await eventually(lambda: len(communities(fake)) == 2, what="paths back")
        assert GRACEFUL_SHUTDOWN not in {c for found in communities(fake).values() for c in found}


async def test_a_reload_that_sets_withdraw_after_applies_to_the_drain_in_force(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery) as daemon:
        daemon.set_drained(True)
        await eventually(lambda: all(GRACEFUL_SHUTDOWN in c for c in communities(fake).values()), what="drained")
        assert daemon.reload(agent_config(tmp_path, withdraw_after=0.1))
        await eventually(lambda: not communities(fake), what="withdrawn after the reloaded withdraw_after")


async def test_a_restarted_agent_stays_drained(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    config = agent_config(tmp_path)
    async with running(config, speaker=fake, discovery=discovery) as daemon:
        daemon.set_drained(True)
        await eventually(lambda: all(GRACEFUL_SHUTDOWN in c for c in communities(fake).values()), what="drained")
    fake.restart()  # even an empty gobgpd gets the paths back drained
    async with running(config, speaker=fake, discovery=FakeDiscovery([endpoint("10.1.0.2/16")])) as daemon:
        assert daemon.state.drain.drained and gauge(daemon) == 1
        assert len(communities(fake)) == 2 and all(GRACEFUL_SHUTDOWN in c for c in communities(fake).values())


async def test_the_reconciler_re_adds_every_path_when_the_drain_changes() -> None:
    cfg = agent_config(Path("/nonexistent"))
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, cfg)
    by_namespace = {"/run/netns/c1": (endpoint("10.1.0.2/16"),)}
    await reconciler.reconcile(by_namespace)
    reconciler.drained = True
    p = await reconciler.reconcile(by_namespace)
    assert {str(r.prefix) for r in p.add} == {"10.1.0.2/32", "10.1.0.0/16"} and not p.withdraw
    assert (await reconciler.reconcile(by_namespace)).empty
    reconciler.withdrawn = True
    assert len((await reconciler.reconcile(by_namespace)).withdraw) == 2 and not fake.owned()
    reconciler.drained = reconciler.withdrawn = False
    assert len((await reconciler.reconcile(by_namespace)).add) == 2


def test_the_drain_file(tmp_path: Path) -> None:
    path = tmp_path / "drained"
    assert not load_drain(path, 5).drained
    path.write_text(json.dumps({"since": 100.0}))
    drain = load_drain(path, 5)
    assert drain == Drain(100.0, 5) and drain.withdraw_at == 105.0 and drain.withdrawn(105.0)
    assert not drain.withdrawn(104.9) and not Drain(100.0).withdrawn(1e12)
    path.write_text("junk")
    assert load_drain(path, 0).drained  # unreadable: drained, the safe side for a host taken out of service


def test_drain_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drain", "--socket", str(tmp_path / "none.sock")]) == 3
    assert main(["undrain", "--socket", str(tmp_path / "none.sock")]) == 3
    assert "cannot reach the agent" in capsys.readouterr().err


async def test_as_path_prepend_puts_gobgpds_as_on_drained_paths_only() -> None:
    cfg = parse_config({"uplinks": ["eth0"], "ownership_community": str(OWNER),
                        "networks": [{"prefix": "10.1.0.0/16", "advertise": "host"}],
                        "drain": {"as_path_prepend": 2, "state_file": "/nonexistent/drained"}})
    fake = FakeGobgp(OWNER)
    reconciler = Reconciler(fake, cfg)
    by_namespace = {"/run/netns/c1": (endpoint("10.1.0.2/16"),)}
    reconciler.drained = True
    await reconciler.reconcile(by_namespace)
    assert [r.attributes.as_path for r in fake.owned().values()] == [()]  # gobgpd's AS not known yet: none
    reconciler.local_as = 65001
    p = await reconciler.reconcile(by_namespace)
    assert [r.attributes.as_path for r in p.add] == [(65001, 65001)]
    reconciler.drained = False
    p = await reconciler.reconcile(by_namespace)
    assert [r.attributes.as_path for r in p.add] == [()]
