"""bench/fleet.py's generated fabric: every host gets its own AS, leaf, network and gobgpd config from host1's."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fleet
from ipvlan_bgp_lab.fibwatch import FibWatch, RouteEvent
from ipvlan_bgp_lab.topology import load_topology

from agent.config import load_config


def test_networks_fit_their_containers_and_never_overlap() -> None:
    plan = fleet.Fleet(8, 250, "host")
    networks = [plan.network(k) for k in range(1, 9)]
    assert all(n.prefixlen == 24 for n in networks) and len(set(networks)) == 8
    assert all(not a.overlaps(b) for a in networks for b in networks if a != b)
    assert len(plan.expected()) == 2000 == fleet.routes_at_spine(8, 250, "host")
    assert len(fleet.Fleet(2, 254, "host").addresses(2)) == 254 and fleet.Fleet(2, 255, "host").network_prefixlen == 23
    assert fleet.Fleet(8, 250, "aggregate").expected() == {str(n) for n in networks}


def test_generated_topology_loads_with_one_config_per_host(tmp_path: Path) -> None:
    plan = fleet.Fleet(3, 5, "aggregate")
    topology = load_topology(fleet.write_topology(plan, tmp_path, "fleet"))
    assert sorted(n.name for n in topology.by_role("host")) == ["h1", "h2", "h3"]
    assert sorted(n.name for n in topology.by_role("router")) == ["leaf1", "leaf2", "spine"]
    gobgpd = tomllib.loads((tmp_path / "h3" / "gobgpd.toml").read_text())
    assert gobgpd["global"]["config"]["as"] == 65203
    (neighbor,) = gobgpd["neighbors"]
    assert neighbor["config"]["peer-as"] == 65101  # h3 hangs off leaf1, as h1 does
    (neighbor,) = tomllib.loads((tmp_path / "h2" / "gobgpd.toml").read_text())["neighbors"]
    assert neighbor["config"]["peer-as"] == 65102  # h2 off leaf2
    assert neighbor["config"]["admin-down"] is True  # the template's: the agent enables the leaf after its push
    (prefix_set,) = gobgpd["defined-sets"]["prefix-sets"]
    assert prefix_set["prefix-list"] == [{"ip-prefix": str(plan.network(3)), "masklength-range": "29..32"}]
    agent = load_config(tmp_path / "h3" / "agent.toml")
    assert [(str(n.prefix), n.advertise.value) for n in agent.networks] == [(str(plan.network(3)), "aggregate")]
    leaf1 = (tmp_path / "leaf1" / "frr.conf").read_text()
    assert "remote-as 65201" in leaf1 and "remote-as 65203" in leaf1 and "remote-as 65202" not in leaf1


def test_a_template_it_cannot_follow_is_an_error() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        fleet.host_gobgpd_conf("[global.config]\n  as = 65000\n", 65201, "1", "2", 65101, fleet.Fleet(1, 1, "host")
                               .network(1))


def test_completion_is_when_the_last_prefix_appeared_not_when_someone_looked() -> None:
    watch = FibWatch(Path("/nonexistent"))
    watch.events += [RouteEvent(1.0, True, "10.0.0.0/24", ("a",)), RouteEvent(2.0, True, "10.0.1.0/24", ("b",)),
                     RouteEvent(3.0, True, "10.0.1.0/24", ("c",)),  # a replace: still there since 2.0
                     RouteEvent(4.0, False, "10.0.0.0/24", ()), RouteEvent(5.0, True, "10.0.0.0/24", ("a",)),
                     RouteEvent(5.5, True, "10.0.2.0/24", ("a",)), RouteEvent(6.0, False, "10.0.2.0/24", ())]
    assert fleet.became(watch, {"10.0.1.0/24"}, True, 0.0) == 2.0
    assert fleet.became(watch, {"10.0.0.0/24", "10.0.1.0/24"}, True, 0.0) == 5.0  # gone at 4.0, back at 5.0
    assert fleet.became(watch, {"10.0.0.0/24"}, True, 4.5) == 5.0
    assert fleet.became(watch, {"10.0.2.0/24"}, False, 0.0) == 6.0
    with pytest.raises(RuntimeError, match="never appeared"):
        fleet.became(watch, {"10.9.9.0/24"}, True, 0.0)
