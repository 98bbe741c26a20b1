"""What an endpoint is, decided from parsed netlink changes alone (pure: no sockets, no kernel; the
bytes are parsed in agent.rtnl).

An endpoint is an ipvlan slave in mode L3 or L3S whose parent is one of this host's uplinks. Inside a
container namespace the kernel reports the parent as (IFLA_LINK = ifindex in the parent's namespace,
IFLA_LINK_NETNSID = the id the container namespace gives the parent's namespace); both must point at
*our* namespace and uplink, or two hosts sharing a kernel would claim each other's containers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from .netlink_types import IPInterface, Link, NamespaceView

OWN_NAMESPACE = ""  # Endpoint.netns of a slave in the agent's own namespace


_ESCAPES = {c: f"\\x{c:02x}" for c in range(256) if not chr(c).isprintable() or chr(c) == "\\"}


def printable(text: str) -> str:
    """``text`` safe for a log line or a terminal table: a backslash and every non-printable character
    (ESC, newline, ...) become \\xNN (or \\uNNNN beyond Latin-1). Interface names and namespace paths come
    from containers."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_ESCAPES.get(ord(c), c) if ord(c) < 256 else c if c.isprintable() else f"\\u{ord(c):04x}"
                   for c in text)


class IpvlanMode(IntEnum):
    L2 = 0
    L3 = 1
    L3S = 2


KEEP_ADDRESS_SET_ABOVE = 64


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
    def address_set(self) -> frozenset[IPInterface]:
        # A container may hold 50,000 addresses, and each of its changes is diffed against the previous
        # endpoint's set: a large one is kept, with its hashes (a small one costs more kept than rebuilt).
        found: frozenset[IPInterface] | None = self.__dict__.get("_address_set")
        if found is None:
            found = frozenset(self.addresses)
            if len(found) > KEEP_ADDRESS_SET_ABOVE:
                self.__dict__["_address_set"] = found
        return found

    @property
    def key(self) -> tuple[str, int]:
        return (self.netns, self.ifindex)

    @property
    def label(self) -> str:
        return printable(f"{self.netns or '(host)'}:{self.ifname}")


def flatten(by_namespace: Mapping[str, tuple[Endpoint, ...]]) -> tuple[Endpoint, ...]:
    return tuple(itertools.chain.from_iterable(by_namespace.values()))


def uplink_ifindexes(own_links: Iterable[Link], uplinks: Iterable[str]) -> dict[int, str]:
    wanted = set(uplinks)
    return {link.ifindex: link.ifname for link in own_links if link.ifname in wanted}


def missing_uplinks(own_links: Iterable[Link], uplinks: Iterable[str]) -> tuple[str, ...]:
    """Configured uplinks with no link of that name in the host: their slaves cannot be found."""
    present = {link.ifname for link in own_links}
    return tuple(name for name in uplinks if name not in present)


def _parent_is_ours(link: Link, view: NamespaceView, own: bool) -> bool:
    if link.parent_nsid is None or link.parent_nsid < 0:
        return own  # parent in the same namespace as the slave
    return view.own_nsid is not None and link.parent_nsid == view.own_nsid


def ignored_in(view: NamespaceView, uplinks: Mapping[int, str], own: bool) -> list[tuple[Link, str]]:
    """The links of one namespace that are not endpoints, each with the reason (``ipvlan-bgp endpoints --all``).
    In the agent's own namespace only ipvlan links are listed (its other links are the host's own), and
    loopbacks nowhere. The counterpart of ``endpoints_in``: a link is in exactly one of the two lists, or
    in neither when it is a loopback or, in the own namespace, not ipvlan."""
    ignored = []
    for link in sorted(view.links.values(), key=lambda link: link.ifindex):
        if link.kind != "ipvlan":
            if not own and link.ifname != "lo":
                ignored.append((link, f"not an ipvlan slave ({link.kind or 'no kind'})"))
        elif link.ipvlan_mode not in (IpvlanMode.L3, IpvlanMode.L3S):
            mode = IpvlanMode(link.ipvlan_mode).name if link.ipvlan_mode == IpvlanMode.L2 else link.ipvlan_mode
            ignored.append((link, f"ipvlan mode {mode}: only L3 and L3S slaves are routed"))
        elif not _parent_is_ours(link, view, own):
            ignored.append((link, "parent in another namespace than this host's"))
        elif link.parent_ifindex is None or link.parent_ifindex not in uplinks:
            ignored.append((link, f"parent (ifindex {link.parent_ifindex}) is not a configured uplink"))
    return ignored


def _address_order(address: IPInterface) -> tuple[int, int, int]:
    # From integers: comparing the ipaddress objects themselves costs 10x (a container may hold 50,000).
    return (address.version, int(address), address.network.prefixlen)


def endpoint_of(netns: str, link: Link, view: NamespaceView, uplinks: Mapping[int, str], own: bool) -> Endpoint | None:
    """The endpoint ``link`` is, if it is one. ``own``: this is the agent's own namespace."""
    if link.kind != "ipvlan" or link.ipvlan_mode not in (IpvlanMode.L3, IpvlanMode.L3S):
        return None
    if not _parent_is_ours(link, view, own) or link.parent_ifindex is None or link.parent_ifindex not in uplinks:
        return None
    held = view.addresses.get(link.ifindex, set())
    addresses = tuple(sorted(held, key=_address_order))
    endpoint = Endpoint(
        netns=netns,
        ifname=link.ifname,
        ifindex=link.ifindex,
        mode=IpvlanMode(link.ipvlan_mode),
        parent=uplinks[link.parent_ifindex],
        addresses=addresses,
        ready=link.up and bool(addresses),
    )
    if len(held) > KEEP_ADDRESS_SET_ABOVE:  # copied with the view's stored hashes: no re-hashing
        endpoint.__dict__["_address_set"] = frozenset(held)
    return endpoint


def endpoints_in(netns: str, view: NamespaceView, uplinks: Mapping[int, str], own: bool) -> list[Endpoint]:
    """The endpoints of one namespace, by ifindex. ``own``: this is the agent's own namespace."""
    found = (endpoint_of(netns, link, view, uplinks, own) for _, link in sorted(view.links.items()))
    return [endpoint for endpoint in found if endpoint is not None]
