"""Docker's view of its ipvlan networks and containers, and the IPAM-ownership filter (pure: no I/O).

With ``[docker] enabled``, an address netlink shows is advertised only if Docker's IPAM assigned it to that
container's endpoint on a network whose parent is the endpoint's uplink; the namespace is matched to the
container through the identity (device, inode) of the container's SandboxKey. Addresses inside a Docker
network that show up anywhere else (a container that added one itself, a namespace Docker does not know)
are refused with a reason. Addresses Docker knows nothing about (outside every Docker network, in a
namespace that is not a Docker sandbox) pass through: the allow-list of ``[[networks]]`` decides for them.

Netlink stays the trigger and the truth for liveness: this only removes addresses, it never adds one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pydantic import ValidationError

from .config import DockerConfig, NetworkConfig
from .endpoints import Endpoint
from .model import Attributes, Community, IPAddress, IPNetwork, LargeCommunity
from .routes import Desired, Refusal

NamespaceId = tuple[int, int]  # (st_dev, st_ino) of a namespace file: equal for every bind mount of it

LABEL_ADVERTISE = "ipvlan-bgp.advertise"
LABEL_COMMUNITIES = "ipvlan-bgp.communities"
LABEL_LARGE_COMMUNITIES = "ipvlan-bgp.large-communities"
ROUTED_MODES = ("l3", "l3s")


@dataclass(frozen=True)
class DockerNetwork:
    id: str
    name: str
    driver: str
    parent: str  # -o parent=...
    mode: str  # -o ipvlan_mode=... ("l2" when not given, as Docker defaults)
    subnets: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class Attachment:
    """One container endpoint on one Docker network, with the addresses Docker's IPAM gave it."""

    network_id: str
    addresses: frozenset[IPAddress]


@dataclass(frozen=True)
class DockerContainer:
    id: str
    name: str
    sandbox: NamespaceId | None  # None: not running, or its namespace file could not be read
    attachments: tuple[Attachment, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def label(self, key: str) -> str | None:
        return next((v for k, v in self.labels if k == key), None)


@dataclass(frozen=True)
class DockerView:
    """Everything Docker said, as of one moment. Never mutated: a change builds a new view."""

    networks: Mapping[str, DockerNetwork] = field(default_factory=dict)  # by network id
    containers: Mapping[str, DockerContainer] = field(default_factory=dict)  # by container id

    def by_sandbox(self) -> dict[NamespaceId, DockerContainer]:
        return {c.sandbox: c for c in self.containers.values() if c.sandbox is not None}


@dataclass(frozen=True)
class NetworkRefusal:
    network: str
    subnet: IPNetwork
    reason: str


def docker_networks(
    view: DockerView, uplinks: Iterable[str], config: DockerConfig, configured: Iterable[NetworkConfig]
) -> tuple[tuple[NetworkConfig, ...], tuple[NetworkRefusal, ...]]:
    """``[[networks]]`` entries supplied by Docker: each subnet of an ipvlan L3/L3S network on one of our uplinks,
    inside an allowed supernet. A subnet that overlaps an operator's ``[[networks]]`` entry is left to it."""
    ours = set(uplinks)
    configured = tuple(configured)
    supplied: list[NetworkConfig] = []
    refused: list[NetworkRefusal] = []
    for net in sorted(view.networks.values(), key=lambda n: n.name):
        if net.driver != "ipvlan" or net.mode not in ROUTED_MODES or net.parent not in ours:
            continue
        for subnet in net.subnets:
            if any(c.prefix.version == subnet.version and c.prefix.overlaps(subnet) for c in configured):
                continue
            if not any(s.version == subnet.version and subnet.subnet_of(s)  # type: ignore[arg-type]
                       for s in config.allowed_supernets):
                refused.append(NetworkRefusal(net.name, subnet, "outside docker.allowed_supernets"))
                continue
            if any(s.prefix.version == subnet.version and s.prefix.overlaps(subnet) for s in supplied):
                refused.append(NetworkRefusal(net.name, subnet, "overlaps another Docker network's subnet"))
                continue
            try:  # the checks an operator's [[networks]] entry gets (not too wide, ...)
                supplied.append(NetworkConfig.model_validate({"prefix": str(subnet), "name": f"docker:{net.name}"}))
            except ValidationError as exc:
                refused.append(NetworkRefusal(net.name, subnet, "; ".join(e["msg"] for e in exc.errors())))
    return tuple(supplied), tuple(refused)


@dataclass(frozen=True)
class AddressRefusal:
    reason: Refusal
    endpoint: str  # Endpoint.label
    container: str  # the Docker container's name, "" when the namespace is no Docker sandbox


@dataclass(frozen=True)
class Ownership:
    endpoints: tuple[Endpoint, ...]  # the input, each keeping only the addresses that may be advertised
    refused: Mapping[IPNetwork, AddressRefusal]  # host prefix (/32, /128) -> why
    extras: Mapping[IPNetwork, Attributes]  # host prefix -> communities its container's labels add
    label_problems: tuple[str, ...] = ()  # labels that were ignored, for a log line


def _host(address: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(address)


def _advertise_label(container: DockerContainer, problems: list[str]) -> bool:
    value = container.label(LABEL_ADVERTISE)
    if value is None or value.strip().lower() in ("true", "yes", "1"):
        return True
    if value.strip().lower() not in ("false", "no", "0"):
        problems.append(f"{container.name}: {LABEL_ADVERTISE}={value!r} is neither true nor false: not advertised")
    return False


def _extras(container: DockerContainer, network: DockerNetwork, config: DockerConfig,
            problems: list[str]) -> Attributes:
    policy = config.policy_for(network.name)
    communities: list[Community] = []
    large: list[LargeCommunity] = []
    for key, parse, allowed, sink in (
        (LABEL_COMMUNITIES, Community.parse, policy.allowed_communities if policy else (), communities),
        (LABEL_LARGE_COMMUNITIES, LargeCommunity.parse, policy.allowed_large_communities if policy else (), large),
    ):
        for text in filter(None, (t.strip() for t in (container.label(key) or "").split(","))):
            try:
                value = parse(text)
            except ValueError as exc:
                problems.append(f"{container.name}: {key}: {exc}")
                continue
            if value not in allowed:
                problems.append(f"{container.name}: {key}: {text} is not allowed on network {network.name}")
                continue
            sink.append(value)  # type: ignore[arg-type]
    return Attributes(communities=tuple(communities), large_communities=tuple(large))


def check_ownership(endpoints: Iterable[Endpoint], namespaces: Mapping[str, NamespaceId], view: DockerView,
                    config: DockerConfig) -> Ownership:
    """Keep only the addresses Docker assigned to each endpoint. ``namespaces``: endpoint netns path -> identity."""
    sandboxes = view.by_sandbox()
    docker_subnets = [s for n in view.networks.values() if n.driver == "ipvlan" for s in n.subnets]
    kept: list[Endpoint] = []
    refused: dict[IPNetwork, AddressRefusal] = {}
    extras: dict[IPNetwork, Attributes] = {}
    problems: list[str] = []
    for endpoint in endpoints:
        identity = namespaces.get(endpoint.netns)
        container = sandboxes.get(identity) if identity is not None else None
        addresses = []
        if container is None:
            for address in endpoint.addresses:
                if any(address.version == s.version and address.ip in s for s in docker_subnets):
                    refused[_host(address.ip)] = AddressRefusal(Refusal.NOT_ASSIGNED_BY_DOCKER, endpoint.label, "")
                else:
                    addresses.append(address)
        else:
            assigned: dict[IPAddress, DockerNetwork] = {}
            for attachment in container.attachments:
                network = view.networks.get(attachment.network_id)
                if network is not None and network.parent == endpoint.parent:
                    assigned.update(dict.fromkeys(attachment.addresses, network))
            advertise = _advertise_label(container, problems) if assigned else True
            for address in endpoint.addresses:
                network = assigned.get(address.ip)
                if network is None:
                    reason: Refusal | None = Refusal.NOT_ASSIGNED_BY_DOCKER
                elif not advertise:
                    reason = Refusal.OPTED_OUT
                else:
                    reason = None
                    addresses.append(address)
                    extra = _extras(container, network, config, problems)
                    if extra != Attributes():
                        extras[_host(address.ip)] = extra
                if reason is not None:
                    refused[_host(address.ip)] = AddressRefusal(reason, endpoint.label, container.name)
        kept.append(endpoint if len(addresses) == len(endpoint.addresses)
                    else replace(endpoint, addresses=tuple(addresses)))
    return Ownership(tuple(kept), refused, extras, tuple(dict.fromkeys(problems)))


def with_docker(desired: Desired, extras: Mapping[IPNetwork, Attributes],
                refused: Mapping[IPNetwork, tuple[Refusal, tuple[str, ...]]]) -> Desired:
    """``desired`` with each host route's communities extended by what its container's labels add, and with
    the addresses Docker's IPAM refused among its refusals (so status, metrics and logs show them)."""
    if not extras and not refused:
        return desired
    routes = dict(desired.routes)
    for prefix, extra in extras.items():
        route = routes.get(prefix)
        if route is not None:
            a = route.attributes
            routes[prefix] = replace(route, attributes=replace(
                a, communities=(*a.communities, *extra.communities),
                large_communities=(*a.large_communities, *extra.large_communities)))
    return replace(desired, routes=routes, refused={**refused, **desired.refused})
