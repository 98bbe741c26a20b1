"""What rtnl's parser produces from link and address messages, and the per-namespace view they keep
up to date (pure: no sockets)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Link:
    """The parts of an RTM_NEWLINK that matter here. ``up``: administratively up and not operationally dead."""

    ifindex: int
    ifname: str
    kind: str
    up: bool
    ipvlan_mode: int | None = None
    parent_ifindex: int | None = None
    parent_nsid: int | None = None  # None: the parent lives in the same namespace as the link


@dataclass(frozen=True)
class LinkGone:
    """An RTM_DELLINK."""

    ifindex: int


@dataclass(frozen=True)
class AddressChange:
    """An RTM_NEWADDR or RTM_DELADDR. ``usable``: present now, global scope, neither tentative nor dad-failed."""

    ifindex: int
    interface: IPInterface
    usable: bool


@dataclass
class NamespaceView:
    """Links and addresses of one namespace, as kept up to date from its dump and events."""

    links: dict[int, Link] = field(default_factory=dict)
    addresses: dict[int, set[IPInterface]] = field(default_factory=dict)
    own_nsid: int | None = None  # the id this namespace gives the agent's namespace, if any
    version: int = 0  # bumped by every change applied: lets a consumer keep what it derived from the view
    changed: set[int] = field(default_factory=set)  # ifindexes changed since the consumer last cleared this

    def apply(self, change: Link | LinkGone | AddressChange) -> None:
        self.version += 1
        self.changed.add(change.ifindex)
        if isinstance(change, Link):
            self.links[change.ifindex] = change
        elif isinstance(change, LinkGone):
            self.links.pop(change.ifindex, None)
            self.addresses.pop(change.ifindex, None)
        else:
            # Drop the address whatever it looked like before; keep it only if it is usable now
            # (a NEWADDR also reports an address turning tentative or changing scope).
            current = self.addresses.setdefault(change.ifindex, set())
            current.discard(change.interface)
            if change.usable:
                current.add(change.interface)
