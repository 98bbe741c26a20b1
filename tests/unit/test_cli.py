"""The command line: exit codes, JSON field names, help text, completion scripts, `endpoints --all`."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path

import pytest

from agent import __version__, cli
from agent.daemon import running
from agent.endpoints import Endpoint, IpvlanMode, endpoints_in, ignored_in, missing_uplinks
from agent.model import Route
from agent.netlink_types import Link, NamespaceView
from agent.routes import Desired, Plan, Refusal
from agent.state import AgentState
from agent.status import overall

from ..completions import FILES, script
from ..fakes import FakeDiscovery, FakeGobgp
from .test_daemon_fake import OWNER, agent_config, endpoint

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "agent.toml"


@pytest.mark.parametrize("argv", [["bogus"], [], ["status", "--no-such-option"], ["plan", "a", "b"],
                                  ["run", "--log-level", "loud"]])
def test_usage_errors_exit_64_not_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == cli.EXIT_USAGE == 64
    assert "usage: ipvlan-bgp" in capsys.readouterr().err


def test_version_and_plain_text_help_listing_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"ipvlan-bgp-agent {__version__}"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "exit codes:" in text
    for code in (0, 1, 2, 3, 4, 5, 64):
        assert f"\n  {code} " in text


def test_routes_help_promises_only_the_exits_routes_has(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["routes", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "3: agent unreachable" in text and "1:" not in text and "5:" not in text


def test_validate_tells_missing_from_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(tmp_path / "missing.toml")]) == cli.EXIT_CONFIG_UNREADABLE == 4
    assert cli.main(["validate", str(tmp_path)]) == 4  # a directory
    bad = tmp_path / "bad.toml"
    bad.write_text('uplinks = []\nbogus = 1\n')
    assert cli.main(["validate", str(bad)]) == cli.EXIT_INVALID_CONFIG == 2
    capsys.readouterr()
    assert cli.main(["validate", "--json", str(bad)]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False and report["readable"] is True and report["config"] == str(bad)
    assert {"field", "message"} == set(report["problems"][0]) and len(report["problems"]) >= 2
    assert cli.main(["validate", "--json", str(EXAMPLE)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] and report["problems"] == [] and report["uplinks"] == ["eth0"]
    assert report["networks"] and report["gobgp_target"]
    assert cli.main(["validate", "--json", str(tmp_path / "missing.toml")]) == 4
    assert json.loads(capsys.readouterr().out)["readable"] is False


def test_status_and_routes_exit_4_for_a_missing_config_and_3_for_no_agent(tmp_path: Path) -> None:
    assert cli.main(["status", str(tmp_path / "missing.toml")]) == 4
    assert cli.main(["routes", "--socket", str(tmp_path / "no.sock")]) == cli.EXIT_UNREACHABLE == 3


def test_overall_state_is_degraded_without_an_established_peer() -> None:
    from agent.gobgp import PeerInfo

    up = PeerInfo("192.0.2.1", 65000, "established", 3.0)
    down = PeerInfo("192.0.2.5", 65000, "active", None)
    in_sync = AgentState(healthy=True)
    assert overall(in_sync, [up, down]) == ("healthy", None)
    assert overall(in_sync, [down])[0] == "degraded"
    assert overall(in_sync, []) == ("degraded", "no Established BGP peer (gobgpd has no neighbor configured)")
    assert overall(in_sync, None)[0] == "degraded"
    assert overall(AgentState(healthy=False, unhealthy_reason="lost gobgpd"), [up]) == ("unhealthy", "lost gobgpd")


async def test_status_against_a_running_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    discovery.missing_uplinks = ("bond9",)
    socket = str(tmp_path / "agent.sock")
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery):
        assert await asyncio.to_thread(cli.main, ["status", "--socket", socket]) == 0
        text = capsys.readouterr().out
        assert "agent:      healthy" in text and "WARNING: uplink bond9 does not exist in this host" in text
        row = next(line.split() for line in text.splitlines() if "192.0.2.254" in line)
        assert row == ["192.0.2.254", "AS65000", "established", "00:00:01", "2", "1"]
        fake.set_peer_state("active")
        assert await asyncio.to_thread(cli.main, ["status", "--json", "--socket", socket]) == 1
        status = json.loads(capsys.readouterr().out)
        assert status["state"] == "degraded" and status["reason"] == "no Established BGP peer"
        assert status["missing_uplinks"] == ["bond9"]
        assert set(status["gobgpd"]["peers"][0]) == {"address", "asn", "state", "uptime_s", "prefixes_received",
                                                     "prefixes_accepted", "prefixes_advertised", "admin_down",
                                                     "held_back"}
        assert await asyncio.to_thread(cli.main, ["routes", "--json", "--socket", socket]) == 0
        assert {r["prefix"] for r in json.loads(capsys.readouterr().out)} == {"10.1.0.2/32", "10.1.0.0/16"}


def route(prefix: str) -> Route:
    return Route(ipaddress.ip_network(prefix), None)


def fake_plan(monkeypatch: pytest.MonkeyPatch, p: Plan, desired: Desired | None = None) -> None:
    async def planned(config: object) -> tuple[Desired, Plan]:
        return desired or Desired({}, {}), p

    monkeypatch.setattr(cli, "_plan", planned)


def test_plan_exit_code_and_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake_plan(monkeypatch, Plan(keep=(route("10.1.100.0/24"),)))
    assert cli.main(["plan", "--exit-code", str(EXAMPLE)]) == 0
    assert "0 to add, 0 to withdraw, 1 unchanged" in capsys.readouterr().out
    desired = Desired({}, {ipaddress.ip_network("10.1.100.5/32"): ("/run/netns/c1:eth0",)},
                      refused={ipaddress.ip_network("8.8.8.8/32"): (Refusal.OUTSIDE, ("/run/netns/c2:eth0",))})
    fake_plan(monkeypatch, Plan(add=(route("10.1.100.5/32"),), withdraw=(route("10.1.100.6/32"),)), desired)
    assert cli.main(["plan", str(EXAMPLE)]) == 0  # without --exit-code: 0 whatever the plan
    capsys.readouterr()
    assert cli.main(["plan", "--exit-code", "--json", str(EXAMPLE)]) == cli.EXIT_CHANGES_PENDING == 5
    assert json.loads(capsys.readouterr().out) == {
        "changes_pending": True, "unchanged": 0,
        "add": [{"prefix": "10.1.100.5/32", "reason": "wanted", "sources": ["/run/netns/c1:eth0"]}],
        "withdraw": [{"prefix": "10.1.100.6/32", "reason": "no longer wanted", "sources": []}],
        "refused": [{"prefix": "8.8.8.8/32", "reason": "outside_networks", "sources": ["/run/netns/c2:eth0"]}],
    }


def test_plan_exit_3_when_gobgpd_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.gobgp import GobgpRejected, GobgpUnavailable

    for exc, code in ((GobgpUnavailable("down"), 3), (GobgpRejected("no"), 1)):
        async def failing(config: object, exc: Exception = exc) -> tuple[Desired, Plan]:
            raise exc

        monkeypatch.setattr(cli, "_plan", failing)
        assert cli.main(["plan", str(EXAMPLE)]) == code


def link(ifindex: int, name: str, kind: str = "ipvlan", mode: int | None = IpvlanMode.L3, parent: int | None = 2,
         nsid: int | None = 0) -> Link:
    return Link(ifindex, name, kind, True, mode if kind == "ipvlan" else None, parent, nsid)


def test_ignored_in_gives_each_non_endpoint_its_reason() -> None:
    view = NamespaceView(own_nsid=0)
    for item in (link(1, "lo", "", None, None, None),
                 link(5, "good"), link(6, "l2", mode=IpvlanMode.L2), link(7, "foreign", nsid=3),
                 link(8, "other-parent", parent=9), link(10, "veth0", "veth", None, None, None)):
        view.apply(item)
    uplinks = {2: "eth0"}
    ignored = {found.ifname: why for found, why in ignored_in(view, uplinks, own=False)}
    assert ignored == {
        "l2": "ipvlan mode L2: only L3 and L3S slaves are routed",
        "foreign": "parent in another namespace than this host's",
        "other-parent": "parent (ifindex 9) is not a configured uplink",
        "veth0": "not an ipvlan slave (veth)",
    }
    assert [e.ifname for e in endpoints_in("/run/netns/c1", view, uplinks, own=False)] == ["good"]
    own = {found.ifname for found, _ in ignored_in(view, uplinks, own=True)}
    assert "veth0" not in own and "l2" in own  # the host's own non-ipvlan links are not listed


def test_missing_uplinks() -> None:
    assert missing_uplinks([link(2, "eth0", "")], ["eth0", "bond0"]) == ("bond0",)


def test_endpoints_all_and_missing_uplink_warning(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ready = Endpoint("/run/netns/c1", "eth0", 5, IpvlanMode.L3, "eth0",
                     (ipaddress.ip_interface("10.1.100.5/24"), ipaddress.ip_interface("8.8.8.8/32")), True)
    down = Endpoint("/run/netns/c2", "eth0", 6, IpvlanMode.L3S, "eth0", (), False)

    async def discovered(config: object) -> cli.Discovered:
        return cli.Discovered((ready, down), frozenset(), [("/run/netns/c3", link(7, "eth0", mode=IpvlanMode.L2),
                                                           "ipvlan mode L2: only L3 and L3S slaves are routed")],
                              ("bond0",))

    monkeypatch.setattr(cli, "_discover", discovered)
    assert cli.main(["endpoints", str(EXAMPLE)]) == 0
    out = capsys.readouterr()
    assert "warning: uplink bond0 does not exist in this host" in out.err and "IGNORED" not in out.out
    assert cli.main(["endpoints", "--all", "--json", str(EXAMPLE)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"uplinks", "missing_uplinks", "endpoints", "ignored"} and data["missing_uplinks"] == ["bond0"]
    assert set(data["endpoints"][0]) == {"netns", "ifname", "ifindex", "mode", "parent", "addresses", "ready"}
    assert [(i["netns"], i["reason"]) for i in data["ignored"]] == [
        ("/run/netns/c3", "ipvlan mode L2: only L3 and L3S slaves are routed"),
        ("/run/netns/c1", "address 8.8.8.8 outside every [[networks]] prefix"),
        ("/run/netns/c2", "endpoint not ready: no usable global address"),
    ]
    assert set(data["ignored"][0]) == {"netns", "ifname", "ifindex", "kind", "reason"}
    assert cli.main(["endpoints", "--all", str(EXAMPLE)]) == 0
    assert "IGNORED BECAUSE" in capsys.readouterr().out


@pytest.mark.parametrize("shell", sorted(FILES))
def test_completion_scripts_match_the_parser(shell: str) -> None:
    committed = (REPO / "contrib" / "completion" / FILES[shell]).read_text()
    assert committed == script(shell), "the CLI changed: run `make completions` and commit the result"
    assert "--exit-code" in committed and "--socket" in committed

