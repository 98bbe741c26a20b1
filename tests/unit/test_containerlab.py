"""Every containerlab topology: valid against containerlab's own schema, plus the checks it cannot make."""

from __future__ import annotations

import ipaddress
import json
import re as stdlib_re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import regex
import yaml
from ipvlan_bgp_lab.topology import (
    AGENT_CONF,
    FRR_CONF,
    GOBGPD_CONF,
    Node,
    TopologyError,
    load_topology,
    parse_topology,
)

from agent.config import load_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "fixtures" / "containerlab" / "clab.schema.json"
TOPOLOGIES = sorted((REPO / "containerlab").glob("*.clab.yml"))


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER

    def pattern(validator: Any, expected: str, instance: Any, _schema: Any) -> Any:
        # containerlab's patterns use \p{..} classes, which only the `regex` module understands.
        if isinstance(instance, str) and not regex.search(expected, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {expected!r}")

    cls = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": pattern})
    return cls(schema, format_checker=checker)


def test_there_is_a_topology() -> None:
    assert TOPOLOGIES


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.name)
def test_topology_matches_containerlab_schema(path: Path) -> None:
    errors = sorted(_validator().iter_errors(yaml.safe_load(path.read_text())), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.name)
def test_topology_semantics_and_bound_configs(path: Path) -> None:
    topology = load_topology(path)
    hosts = topology.by_role("host")
    assert hosts and topology.by_role("router")
    for node in hosts:
        load_config(node.binds[AGENT_CONF])  # what `ipvlan-bgp validate` checks
        assert node.binds[GOBGPD_CONF].read_text().strip()
    linked = {end[0] for link in topology.links for end in (link.a, link.b)}
    assert linked == set(topology.nodes)


def test_schema_rejects_a_broken_topology() -> None:
    errors = list(_validator().iter_errors({"name": "x", "topology": {"nodes": {"a": {"kind": 7}}}}))
    assert errors


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"topology": {"nodes": {"a": {}}, "links": [{"endpoints": ["a:eth1", "ghost:eth1"]}]}}, "names no node"),
        ({"topology": {"nodes": {"a": {}, "b": {}}, "links": [{"endpoints": ["a:eth1"]}]}}, "exactly two"),
        ({"topology": {"nodes": {"a": {"binds": ["missing.conf:/etc/x"]}}}}, "does not exist"),
        ({"topology": {"nodes": {"a": {}, "b": {}},
                       "links": [{"endpoints": ["a:eth1", "b:eth1"]}, {"endpoints": ["a:eth1", "b:eth2"]}]}},
         "used by two links"),
    ],
)
def test_semantic_errors(data: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=stdlib_re.escape(message)):
        parse_topology(data, tmp_path / "t.clab.yml")


FRR_CONFIGS = sorted((REPO / "containerlab").rglob("frr.conf"))


@pytest.mark.skipif(shutil.which("vtysh") is None, reason="FRR's vtysh is not installed")
@pytest.mark.parametrize("path", FRR_CONFIGS, ids=lambda p: str(p.parent.relative_to(REPO / "containerlab")))
def test_frr_accepts_the_shipped_router_configs(path: Path) -> None:
    out = subprocess.run(["vtysh", "--dryrun", "-f", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", FRR_CONFIGS, ids=lambda p: str(p.parent.relative_to(REPO / "containerlab")))
def test_every_router_honours_graceful_shutdown_on_every_ebgp_session(path: Path) -> None:
    """RFC 8326 receivers: each neighbor's inbound route-map lowers local-preference for 65535:0."""
    text = path.read_text()
    neighbors = set(stdlib_re.findall(r"^ neighbor (\S+) remote-as", text, stdlib_re.M))
    neighbors |= set(stdlib_re.findall(r"^ neighbor (\S+) interface remote-as", text, stdlib_re.M))
    assert neighbors
    assert neighbors == set(stdlib_re.findall(r"^  neighbor (\S+) route-map honour-gshut in", text, stdlib_re.M))
    assert "permit graceful-shutdown" in text and " set local-preference 0" in text


def _addresses(node: Node) -> dict[str, list[str]]:
    """interface -> the addresses (IPv4 first) the node's exec lines give it (in its own namespace)."""
    found = (stdlib_re.fullmatch(r"ip (?:-6 )?addr add (\S+)/\d+ dev (\S+)(?: nodad)?", line) for line in node.exec)
    addresses: dict[str, list[str]] = {}
    for m in found:
        if m:
            addresses.setdefault(m.group(2), []).append(m.group(1))
    return {name: sorted(found, key=lambda a: ":" in a) for name, found in addresses.items()}


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.name)
def test_every_host_and_its_router_agree_on_the_bgp_session(path: Path) -> None:
    """Each host's gobgpd peers with the router at the other end of its uplink (address and AS), and that
    router has the host as a neighbor with the host's AS."""
    topology = load_topology(path)
    for host in topology.by_role("host"):
        (link,) = [link for link in topology.links if host.name in (link.a[0], link.b[0])]
        (router_name, router_if), (_, host_if) = (link.b, link.a) if link.a[0] == host.name else (link.a, link.b)
        router = topology.nodes[router_name]
        gobgpd = tomllib.loads(host.binds[GOBGPD_CONF].read_text())
        frr = router.binds[FRR_CONF].read_text()
        router_as = int(stdlib_re.search(r"^router bgp (\d+)", frr, stdlib_re.M).group(1))  # type: ignore[union-attr]
        assert gobgpd["neighbors"], host.name
        for neighbor in gobgpd["neighbors"]:  # one session per family the link carries
            assert neighbor["config"]["neighbor-address"] in _addresses(router)[router_if], host.name
            assert neighbor["config"]["peer-as"] == router_as, host.name
        host_as = gobgpd["global"]["config"]["as"]
        for host_address in _addresses(host)[host_if][:len(gobgpd["neighbors"])]:
            assert f" neighbor {host_address} remote-as {host_as}\n" in frr, (host.name, router_name)


def test_the_fabric_has_a_spine_two_leaves_four_hosts_and_an_anycast_service() -> None:
    topology = load_topology(REPO / "containerlab" / "fabric.clab.yml")
    # the embedded lab's demo watches the first router: the spine
    assert [n.name for n in topology.by_role("router")] == ["spine", "leaf1", "leaf2"]
    assert sorted(n.name for n in topology.by_role("host")) == ["host1", "host2", "host3", "host4"]
    assert [n.name for n in topology.by_role("plain")] == ["client"]
    modes = {stdlib_re.search(r"type ipvlan mode (l3s?)$", line).group(1)  # type: ignore[union-attr]
             for host in topology.by_role("host") for line in host.exec if "type ipvlan" in line}
    assert modes == {"l3", "l3s"}
    anycast = ipaddress.ip_address("10.99.0.10")
    serving = [host for host in topology.by_role("host")
               if any(line.endswith(f" addr add {anycast}/24 dev {line.split()[2]}") for line in host.exec)]
    assert len(serving) == 3
    for host in serving:
        network = load_config(host.binds[AGENT_CONF]).network_for(anycast)
        assert network is not None and network.anycast
        sets = tomllib.loads(host.binds[GOBGPD_CONF].read_text())["defined-sets"]["prefix-sets"]
        assert any(anycast in ipaddress.ip_network(p["ip-prefix"]) for s in sets for p in s["prefix-list"])
