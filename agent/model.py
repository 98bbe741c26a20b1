"""Value types shared by every stage: prefixes, communities and the Route the agent advertises.

Everything here is immutable and hashable, so whole states can be compared and diffed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Self

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF


def _parse_fields(text: str, count: int, limit: int, what: str) -> tuple[int, ...]:
    parts = text.split(":")
    if len(parts) != count or not all(p.isdigit() for p in parts):
        raise ValueError(f"{what} {text!r} must be {count} decimal numbers separated by ':'")
    values = tuple(int(p) for p in parts)
    if any(v > limit for v in values):
        raise ValueError(f"{what} {text!r}: each part must be at most {limit}")
    return values


@dataclass(frozen=True, order=True)
class Community:
    """An RFC 1997 community ``ASN:VALUE`` (two 16-bit halves)."""

    asn: int
    value: int

    @classmethod
    def parse(cls, text: str) -> Self:
        asn, value = _parse_fields(text, 2, _U16, "community")
        return cls(asn, value)

    @classmethod
    def from_u32(cls, raw: int) -> Self:
        return cls(raw >> 16, raw & _U16)

    def to_u32(self) -> int:
        return (self.asn << 16) | self.value

    def __str__(self) -> str:
        return f"{self.asn}:{self.value}"


@dataclass(frozen=True, order=True)
class LargeCommunity:
    """An RFC 8092 large community ``GLOBAL:LOCAL1:LOCAL2`` (three 32-bit parts)."""

    global_admin: int
    local_data1: int
    local_data2: int

    @classmethod
    def parse(cls, text: str) -> Self:
        a, b, c = _parse_fields(text, 3, _U32, "large community")
        return cls(a, b, c)

    def __str__(self) -> str:
        return f"{self.global_admin}:{self.local_data1}:{self.local_data2}"


@dataclass(frozen=True)
class Attributes:
    """Path attributes the agent controls. Communities are kept sorted so equal sets compare equal."""

    communities: tuple[Community, ...] = ()
    large_communities: tuple[LargeCommunity, ...] = ()
    local_pref: int | None = None
    med: int | None = None
    as_path: tuple[int, ...] = ()  # an AS_SEQUENCE written on the path (a drain's prepend); gobgpd adds its own AS

    def __post_init__(self) -> None:
        object.__setattr__(self, "communities", tuple(sorted(set(self.communities))))
        object.__setattr__(self, "large_communities", tuple(sorted(set(self.large_communities))))


@dataclass(frozen=True)
class Route:
    """One path as the agent wants it in (or finds it in) gobgpd.

    ``next_hop`` None means "unspecified" (0.0.0.0 / ::): gobgpd then sends each peer the
    session's own local address.
    """

    prefix: IPNetwork
    next_hop: IPAddress | None = None
    attributes: Attributes = field(default_factory=Attributes)

    def __post_init__(self) -> None:
        if self.next_hop is not None and self.next_hop.version != self.prefix.version:
            raise ValueError(f"next hop {self.next_hop} is not of the same family as {self.prefix}")

    @property
    def version(self) -> int:
        return self.prefix.version

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return (self.prefix.version, int(self.prefix.network_address), self.prefix.prefixlen)

    def owned_by(self, owner: LargeCommunity) -> bool:
        return owner in self.attributes.large_communities
