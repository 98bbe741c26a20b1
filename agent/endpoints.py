"""What an endpoint is, decided from netlink messages alone (pure: no sockets, no kernel).

An endpoint is an ipvlan slave in mode L3 or L3S whose parent is one of this host's uplinks. Inside a
container namespace the kernel reports the parent as (IFLA_LINK = ifindex in the parent's namespace,
IFLA_LINK_NETNSID = the id the container namespace gives the parent's namespace); both must point at
*our* namespace and uplink, or two hosts sharing a kernel would claim each other's containers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

IFF_UP = 0x1
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RT_SCOPE_UNIVERSE = 0
# Operational states in which an ipvlan slave cannot carry traffic (its parent is down or gone).
_DEAD_OPERSTATES = frozenset({"DOWN", "LOWERLAYERDOWN", "NOTPRESENT"})
OWN_NAMESPACE = ""  # Endpoint.netns of a slave in the agent's own namespace


class IpvlanMode(IntEnum):
    L2 = 0
    L3 = 1
    L3S = 2


@dataclass(frozen=True)
class Link:
    """The parts of an RTM_NEWLINK that matter here."""

    ifindex: int
    ifname: str
    kind: str
    up: bool
    ipvlan_mode: int | None = None
    parent_ifindex: int | None = None
    parent_nsid: int | None = None  # None: the parent lives in the same namespace as the link


@dataclass(frozen=True)
class Address:
    """A usable (global, not tentative, not dad-failed) address of an interface, with its prefix length."""

    ifindex: int
    interface: IPInterface


@dataclass(frozen=True)
class Endpoint:
    netns: str  # the namespace file it was found through; OWN_NAMESPACE for the agent's own
    ifname: str
    ifindex: int
    mode: IpvlanMode
    parent: str
    addresses: tuple[IPInterface, ...]
    ready: bool

    @property
    def key(self) -> tuple[str, int]:
        return (self.netns, self.ifindex)

    @property
    def label(self) -> str:
        return f"{self.netns or '(host)'}:{self.ifname}"


def parse_link(msg: Any) -> Link:
    """RTM_NEWLINK (a pyroute2 ifinfmsg) -> Link."""
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
    mode = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_IPVLAN_MODE") if kind == "ipvlan" else None
    operstate = msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"
    return Link(
        ifindex=msg["index"],
        ifname=msg.get_attr("IFLA_IFNAME") or f"if{msg['index']}",
        kind=kind,
        up=bool(msg["flags"] & IFF_UP) and operstate not in _DEAD_OPERSTATES,
        ipvlan_mode=mode,
        parent_ifindex=msg.get_attr("IFLA_LINK"),
        parent_nsid=msg.get_attr("IFLA_LINK_NETNSID"),
    )


def _interface(msg: Any) -> IPInterface | None:
    address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    return None if address is None else ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")


def parse_address(msg: Any) -> Address | None:
    """RTM_NEWADDR (a pyroute2 ifaddrmsg) -> Address, or None if it is not advertisable."""
    flags = msg.get_attr("IFA_FLAGS")
    if flags is None:
        flags = msg["flags"]
    interface = _interface(msg)
    if interface is None or msg["scope"] != RT_SCOPE_UNIVERSE or flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
        return None
    return Address(msg["index"], interface)


@dataclass
class NamespaceView:
    """Links and addresses of one namespace, as kept up to date from its dump and events."""

    links: dict[int, Link] = field(default_factory=dict)
    addresses: dict[int, set[IPInterface]] = field(default_factory=dict)
    own_nsid: int | None = None  # the id this namespace gives the agent's namespace, if any

    def apply(self, event: str, msg: Any) -> None:
        if event == "RTM_NEWLINK":
            link = parse_link(msg)
            self.links[link.ifindex] = link
        elif event == "RTM_DELLINK":
            self.links.pop(msg["index"], None)
            self.addresses.pop(msg["index"], None)
        elif event in ("RTM_NEWADDR", "RTM_DELADDR"):
            # Drop the address whatever it looked like before; keep it only if it is usable now
            # (a NEWADDR also reports an address turning tentative or changing scope).
            interface = _interface(msg)
            if interface is None:
                return
            current = self.addresses.setdefault(msg["index"], set())
            current.discard(interface)
            if event == "RTM_NEWADDR" and parse_address(msg) is not None:
                current.add(interface)


def uplink_ifindexes(own_links: Iterable[Link], uplinks: Iterable[str]) -> dict[int, str]:
    wanted = set(uplinks)
    return {link.ifindex: link.ifname for link in own_links if link.ifname in wanted}


def endpoints_in(netns: str, view: NamespaceView, uplinks: Mapping[int, str], own: bool) -> list[Endpoint]:
    """The endpoints of one namespace. ``own``: this is the agent's own namespace."""
    found = []
    for link in view.links.values():
        if link.kind != "ipvlan" or link.ipvlan_mode not in (IpvlanMode.L3, IpvlanMode.L3S):
            continue
        if link.parent_nsid is None or link.parent_nsid < 0:
            parent_is_ours = own  # parent in the same namespace as the slave
        else:
            parent_is_ours = view.own_nsid is not None and link.parent_nsid == view.own_nsid
        if not parent_is_ours or link.parent_ifindex is None or link.parent_ifindex not in uplinks:
            continue
        addresses = tuple(sorted(view.addresses.get(link.ifindex, ()), key=lambda a: (a.version, a)))
        found.append(Endpoint(
            netns=netns,
            ifname=link.ifname,
            ifindex=link.ifindex,
            mode=IpvlanMode(link.ipvlan_mode),
            parent=uplinks[link.parent_ifindex],
            addresses=addresses,
            ready=link.up and bool(addresses),
        ))
    return found
