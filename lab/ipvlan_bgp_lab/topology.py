"""Read a containerlab topology (``*.clab.yml``) into the few facts the embedded lab needs.

Roles come from what a node binds: ``/etc/frr/frr.conf`` makes it an FRR router, ``/etc/gobgpd/gobgpd.toml``
plus ``/etc/ipvlan-bgp/agent.toml`` a host running gobgpd and the agent; anything else is a plain node.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FRR_CONF = "/etc/frr/frr.conf"
GOBGPD_CONF = "/etc/gobgpd/gobgpd.toml"
AGENT_CONF = "/etc/ipvlan-bgp/agent.toml"


class TopologyError(ValueError):
    pass


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    image: str
    binds: dict[str, Path]  # path inside the node -> file in the repository
    exec: tuple[str, ...] = ()

    @property
    def role(self) -> str:
        if FRR_CONF in self.binds:
            return "router"
        if GOBGPD_CONF in self.binds and AGENT_CONF in self.binds:
            return "host"
        return "plain"


@dataclass(frozen=True)
class Link:
    a: tuple[str, str]  # (node, interface)
    b: tuple[str, str]


@dataclass(frozen=True)
class Topology:
    name: str
    path: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    links: tuple[Link, ...] = ()

    def by_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == role]


def _endpoint(text: str, nodes: dict[str, Any], where: str) -> tuple[str, str]:
    node, sep, ifname = text.partition(":")
    if not sep or not node or not ifname:
        raise TopologyError(f"{where}: endpoint {text!r} is not NODE:INTERFACE")
    if node not in nodes:
        raise TopologyError(f"{where}: endpoint {text!r} names no node of the topology")
    if len(ifname) > 15:
        raise TopologyError(f"{where}: interface name {ifname!r} is longer than 15 characters")
    return node, ifname


def parse_topology(data: dict[str, Any], path: Path) -> Topology:
    """Semantic checks the JSON schema cannot make: links name existing nodes, bound files exist."""
    base = path.parent
    raw_nodes: dict[str, Any] = (data.get("topology") or {}).get("nodes") or {}
    nodes: dict[str, Node] = {}
    for name, spec in raw_nodes.items():
        spec = spec or {}
        binds: dict[str, Path] = {}
        for bind in spec.get("binds", []):
            source, _, target = bind.partition(":")
            target = target.split(":")[0]
            file = (base / source).resolve()
            if not file.exists():
                raise TopologyError(f"nodes.{name}.binds: {source} does not exist (relative to {base})")
            binds[target] = file
        nodes[name] = Node(name, spec.get("kind", ""), spec.get("image", ""), binds, tuple(spec.get("exec", [])))
    links = []
    seen: set[tuple[str, str]] = set()
    for i, spec in enumerate((data.get("topology") or {}).get("links") or []):
        endpoints = spec.get("endpoints", [])
        if len(endpoints) != 2:
            raise TopologyError(f"links[{i}]: needs exactly two endpoints")
        a, b = (_endpoint(e, raw_nodes, f"links[{i}]") for e in endpoints)
        for end in (a, b):
            if end in seen:
                raise TopologyError(f"links[{i}]: {end[0]}:{end[1]} is used by two links")
            seen.add(end)
        links.append(Link(a, b))
    return Topology(data.get("name", path.stem), path, nodes, tuple(links))


def load_topology(path: Path) -> Topology:
    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise TopologyError(f"{path}: not a containerlab topology")
    return parse_topology(data, path)


def without_containers(topology: Topology, name: str) -> Topology:
    """The topology renamed, with every exec line that makes an ipvlan container left out: its routing runs on a
    kernel without ipvlan (the netns tier, bench/fabric_convergence.py)."""
    def keep(line: str) -> bool:
        return not (line.startswith("ip netns add") or "type ipvlan" in line or line.startswith("ip -n ")
                    or (line.startswith("ip link set ") and " netns " in line))
    nodes = {n: dataclasses.replace(node, exec=tuple(filter(keep, node.exec))) for n, node in topology.nodes.items()}
    return dataclasses.replace(topology, name=name, nodes=nodes)
