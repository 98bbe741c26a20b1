from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import AgentConfig, ConfigError, OnShutdown, load_config, parse_config
from agent.model import Community, LargeCommunity

REPO = Path(__file__).resolve().parents[2]
MINIMAL: dict[str, Any] = {"uplinks": ["eth0"], "ownership_community": "65001:4242:1"}


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_shipped_example_is_valid() -> None:
    config = load_config(REPO / "config" / "agent.toml")
    assert config.uplinks == ("eth0",)
    assert config.ownership_community == LargeCommunity(65001, 4242, 1)
    web = config.networks[0]
    assert web.prefix == ipaddress.ip_network("10.1.100.0/24")
    assert web.communities == (Community(65001, 100),)
    assert config.network_for(ipaddress.ip_address("10.1.100.7")) is web
    assert config.network_for(ipaddress.ip_address("8.8.8.8")) is None


def test_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.gobgp.target == "127.0.0.1:50051"
    assert [str(d) for d in config.netns_dirs] == ["/run/netns", "/run/docker/netns"]
    assert config.on_shutdown is OnShutdown.RETAIN
    assert config.next_hop.ipv4 is None and config.next_hop.ipv6 is None
    assert config.timers.settle <= 0.05


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ({"networks": [{"prefix": "10.1.100.1/24"}]}, "networks[0].prefix", "host bits set"),
        ({"networks": [{"prefix": "10.1.100.0/33"}]}, "networks[0].prefix", "not a network prefix"),
        ({"networks": [{"prefix": 10}]}, "networks[0].prefix", "must be a prefix string"),
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"gobgp": {"target": "x", "port": 1}}, "gobgp.port", "unknown key"),
        ({"ownership_community": "70000:1:1"}, "", ""),  # 70000 fits 32 bits: valid, see below
        ({"ownership_community": "1:2:4294967296"}, "ownership_community", "at most 4294967295"),
        ({"ownership_community": "1:2"}, "ownership_community", "3 decimal numbers"),
        (
            {"networks": [{"prefix": "10.0.0.0/8", "communities": ["65536:1"]}]},
            "networks[0].communities[0]",
            "at most 65535",
        ),
        ({"networks": [{"prefix": "10.0.0.0/8", "local_pref": -1}]}, "networks[0].local_pref", "greater than"),
        ({"networks": [{"prefix": "10.0.0.0/8", "med": 1.5}]}, "networks[0].med", "valid integer"),
        ({"max_prefixes": "10"}, "max_prefixes", "valid integer"),
        ({"max_prefixes": 0}, "max_prefixes", "greater than or equal to 1"),
        ({"uplinks": []}, "uplinks", "at least 1 item"),
        ({"uplinks": ["a/b"]}, "uplinks[0]", "not a valid interface name"),
        ({"uplinks": ["eth0", "eth0"]}, "", "listed more than once"),
        ({"next_hop": {"ipv4": "2001:db8::1"}}, "next_hop", "not an IPv4 address"),
        ({"next_hop": {"ipv6": "nope"}}, "next_hop.ipv6", "neither 'unspecified' nor an IP address"),
        ({"on_shutdown": "drop"}, "on_shutdown", "'retain' or 'withdraw'"),
        ({"networks": [{"prefix": "10.0.0.0/8"}, {"prefix": "10.1.0.0/16"}]}, "", "overlaps"),
        ({"networks": [{"prefix": "10.0.0.0/8", "large_communities": ["65001:4242:1"]}]}, "", "reserved"),
        ({"gobgp": {"target": "unix:/run/gobgpd.sock", "tls_ca_file": "/ca.pem"}}, "gobgp", "unix: socket"),
        ({"gobgp": {"rpc_timeout": float("inf")}}, "gobgp.rpc_timeout", "finite number"),
        ({"gobgp": {"rpc_timeout": 601.0}}, "gobgp.rpc_timeout", "less than or equal to 600"),
        ({"timers": {"settle": float("nan")}}, "timers.settle", "finite number"),
        ({"timers": {"netns_rescan": 0.0001}}, "timers.netns_rescan", "greater than or equal to 0.1"),
        ({"max_prefixes": 1e26}, "max_prefixes", "valid integer"),
        ({"max_prefixes": 10**26}, "max_prefixes", "less than or equal to 1000000"),
        ({"max_prefixes_per_namespace": 0}, "max_prefixes_per_namespace", "greater than or equal to 1"),
        ({"networks": [{"prefix": "0.0.0.0/0"}]}, "networks[0]", "any address"),
        ({"networks": [{"prefix": "::/0"}]}, "networks[0]", "any address"),
        ({"networks": [{"prefix": "10.0.0.0/7"}]}, "networks[0]", "wider than /8"),
        ({"networks": [{"prefix": "10.0.0.0/8", "exclude": ["11.0.0.0/24"]}]}, "networks[0]", "not inside"),
        ({"networks": [{"prefix": "10.0.0.0/8", "exclude": ["2001:db8::/64"]}]}, "networks[0]", "not inside"),
        ({"status": {"socket": "agent.sock"}}, "status", "absolute path"),
        ({"networks": [{"prefix": "10.0.0.0/8", "anycast": "yes"}]}, "networks[0].anycast", "valid boolean"),
        ({"networks": [{"prefix": "10.0.0.0/8", "anycast": True, "advertise": "aggregate"}]}, "networks[0]",
         "anycast = true needs host routes"),
        ({"networks": [{"prefix": "10.0.0.0/8", "anycast": True, "advertise": "host"}]}, "", ""),
    ],
)
def test_invalid_values_name_their_field(change: dict[str, Any], where: str, message: str) -> None:
    data = {**MINIMAL, **change}
    if not message:
        parse_config(data)
        return
    found = problems(data)
    assert any(loc == where and message in text for loc, text in found), found


def test_missing_required_keys_are_all_reported() -> None:
    assert sorted(problems({})) == [
        ("ownership_community", "required key is missing"),
        ("uplinks", "required key is missing"),
    ]


def test_every_problem_is_reported_at_once() -> None:
    found = problems({**MINIMAL, "max_prefixes": "x", "bogus": 1, "networks": [{"prefix": "1.2.3.4/8"}]})
    assert {loc for loc, _ in found} == {"max_prefixes", "bogus", "networks[0].prefix"}


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("uplinks = [eth0\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_config(broken)


def test_validate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "agent.toml"
    shutil.copy(REPO / "config" / "agent.toml", good)
    assert main(["validate", str(good)]) == 0
    assert "OK" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text(
        good.read_text()
        .replace("10.1.100.0/24", "10.1.100.1/24")
        .replace("max_prefixes = 10000", 'max_prefixes = "lots"')
    )
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "networks[0].prefix" in err and "host bits set" in err
    assert "max_prefixes" in err and "'lots'" in err


def test_config_is_immutable() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        config.max_prefixes = 5  # type: ignore[misc]
    assert isinstance(config, AgentConfig)


def test_a_valid_exclude_and_the_namespace_quota_bounded_by_the_cap() -> None:
    config = parse_config({**MINIMAL, "max_prefixes": 500,
                           "networks": [{"prefix": "10.0.0.0/8", "exclude": ["10.0.0.0/24"]}]})
    assert config.networks[0].excludes(ipaddress.ip_address("10.0.0.1"))
    assert not config.networks[0].excludes(ipaddress.ip_address("10.0.1.1"))
    assert config.max_prefixes_per_namespace == 1000 and config.namespace_quota == 500


def test_overlaps_are_found_by_sweep_among_10000_networks() -> None:
    networks = [{"prefix": f"10.{i >> 8}.{i & 255}.0/24"} for i in range(10_000)]
    assert len(parse_config({**MINIMAL, "networks": networks}).networks) == 10_000
    networks += [{"prefix": "10.3.0.0/16"}, {"prefix": "2001:db8::/32"}, {"prefix": "2001:db8:1::/48"}]
    found = [text for _, text in problems({**MINIMAL, "networks": networks})]
    overlaps = [line for text in found for line in text.split("; ") if "overlaps" in line]
    assert len(overlaps) == 256 + 1  # every /24 inside 10.3.0.0/16, and the IPv6 pair
    assert "networks[10002] 2001:db8:1::/48 overlaps networks[10001] 2001:db8::/32" in overlaps


@pytest.mark.parametrize("content", [
    b"x = " + b"[" * 100_000 + b"]" * 100_000,  # RecursionError in the TOML parser
    b"x = " + b"{a = " * 5_000 + b"1" + b"}" * 5_000,
    b"uplinks = [\"eth0\xff\"]",  # invalid UTF-8
    bytes(range(256)) * 16,  # binary junk
    b"#" * (17 * 1024 * 1024),  # larger than any configuration
])
def test_validate_exits_2_without_a_traceback_on_any_file(tmp_path: Path, content: bytes,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_validate_refuses_directories_fifos_and_the_status_socket_on_the_config(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # no writer: a blocking open would hang here
    for path in (tmp_path, fifo):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config(path)
    itself = tmp_path / "agent.toml"
    shutil.copy(REPO / "config" / "agent.toml", itself)
    itself.write_text(itself.read_text().replace('socket = "/run/ipvlan-bgp/agent.sock"', f'socket = "{itself}"'))
    with pytest.raises(ConfigError, match="configuration file itself"):
        load_config(itself)


def test_rpc_timeout_must_fit_the_shipped_units_watchdog() -> None:
    from agent.config import UNIT_WATCHDOG_SEC

    unit = (Path(__file__).parents[2] / "config" / "ipvlan-bgp-agent.service").read_text()
    assert f"\nWatchdogSec={UNIT_WATCHDOG_SEC}\n" in unit
    parse_config({"uplinks": ["eth0"], "ownership_community": "65001:4242:1",
                  "gobgp": {"rpc_timeout": UNIT_WATCHDOG_SEC / 2 - 1}})
    with pytest.raises(ConfigError, match="rpc_timeout"):
        parse_config({"uplinks": ["eth0"], "ownership_community": "65001:4242:1",
                      "gobgp": {"rpc_timeout": UNIT_WATCHDOG_SEC / 2}})
