"""What the embedded lab looks like right now: the ToR's BGP table and FIB, each host's paths, pings."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from dataclasses import dataclass

from .embedded import EmbeddedLab, in_netns, ip
from .netns import enter


@dataclass(frozen=True)
class Container:
    netns: str
    host: str  # the lab node whose uplink it hangs off
    address: str


@dataclass(frozen=True)
class Ping:
    source: str
    target: str
    ok: bool
    rtt_ms: float | None


def host_prefix(address: str) -> str:
    """The /32 or /128 of a container address."""
    return f"{address}/{ipaddress.ip_address(address).max_prefixlen}"


def containers(lab: EmbeddedLab) -> list[Container]:
    """Container namespaces and their global IPv4 and IPv6 addresses, with the host each one belongs to."""
    owner = {}
    for node in lab.topology.nodes.values():
        for line in node.exec:
            match = re.match(r"ip netns add (\S+)", line)
            if match:
                owner[match.group(1)] = node.name
    found = []
    for ns in lab.state.containers:
        out = ip("-j", "addr", "show", "scope", "global", netns=ns, check=False)
        for iface in json.loads(out.stdout or "[]"):
            for info in iface.get("addr_info", []):
                if "local" in info:  # `ip -j` lists an address the filter dropped as an empty object
                    found.append(Container(ns, owner.get(ns, "?"), info["local"]))
    return sorted(found, key=lambda c: (ipaddress.ip_address(c.address).version, ipaddress.ip_address(c.address)))


def fib(lab: EmbeddedLab, router: str) -> dict[str, list[str]]:
    """BGP routes (IPv4, then IPv6) in the router's kernel FIB: prefix -> next hops."""
    table: dict[str, list[str]] = {}
    for family in ("-4", "-6"):
        out = ip("-j", family, "route", "show", "proto", "bgp", netns=lab.state.node_ns(router), check=False)
        for route in json.loads(out.stdout or "[]"):
            dst = route["dst"] if "/" in route["dst"] else host_prefix(route["dst"])
            hops = [route["gateway"]] if "gateway" in route else [h["gateway"] for h in route.get("nexthops", [])]
            table[dst] = hops
    return table


def host_paths(lab: EmbeddedLab, host: str) -> list[str]:
    """Prefixes the host's gobgpd originates (its RIB also holds what the ToR sends back: left out)."""
    target = lab.state.api.get(host, "127.0.0.1:50051")
    address, _, port = target.rpartition(":")
    local = []
    for family in ("ipv4", "ipv6"):
        out = subprocess.run([*enter(lab.state.node_ns(host)), "gobgp", "-u", address, "-p", port,
                              "global", "rib", "-a", family, "-j"], capture_output=True, text=True)
        rib = json.loads(out.stdout or "{}")
        local += [prefix for prefix, paths in rib.items()
                  if any(path.get("neighbor-ip", "<nil>") == "<nil>" for path in paths)]
    return sorted(local, key=lambda p: (ipaddress.ip_network(p).version, ipaddress.ip_network(p)))


def ping(lab: EmbeddedLab, source: str, target: str) -> Ping:
    out = in_netns(lab.state.node_ns(source), f"ping -c 1 -W 2 {target}", check=False)
    match = re.search(r"time=([\d.]+) ms", out.stdout)
    return Ping(source, target, out.returncode == 0, float(match.group(1)) if match else None)


def neighbor_of(lab: EmbeddedLab, router: str) -> dict[str, str]:
    """Next-hop address -> node name, for the router's directly connected neighbours."""
    names = {}
    for link in lab.topology.links:
        for here, there in ((link.a, link.b), (link.b, link.a)):
            if here[0] != router:
                continue
            out = ip("-j", "addr", "show", "dev", there[1], "scope", "global", netns=lab.state.node_ns(there[0]),
                     check=False)
            for iface in json.loads(out.stdout or "[]"):
                for info in iface.get("addr_info", []):
                    if "local" in info:
                        names[info["local"]] = there[0]
    return names
