"""The IPAM-ownership filter and Docker-supplied networks (agent.ipam), and parsing Docker's inspect JSON."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ConfigError, parse_config
from agent.docker_source import container_from_inspect, network_from_inspect
from agent.endpoints import Endpoint, IpvlanMode
from agent.ipam import (
    Attachment,
    DockerContainer,
    DockerNetwork,
    DockerView,
    check_ownership,
    docker_networks,
)
from agent.model import Attributes, Community, LargeCommunity

NET_L3 = DockerNetwork("n1", "web", "ipvlan", "eth0", "l3", (ipaddress.ip_network("10.1.100.0/24"),
                                                              ipaddress.ip_network("2001:db8:100::/64")))
NET_L3S = DockerNetwork("n2", "db", "ipvlan", "eth1", "l3s", (ipaddress.ip_network("10.2.100.0/24"),))
SANDBOX = {"/run/docker/netns/aaa": (4, 1001), "/run/docker/netns/bbb": (4, 1002), "/run/netns/manual": (4, 2001)}
BASE: dict[str, Any] = {"uplinks": ["eth0", "eth1"], "ownership_community": "65001:4242:1"}
CONFIG = parse_config({**BASE, "networks": [{"prefix": "10.2.0.0/16"}], "docker": {
    "enabled": True, "allowed_supernets": ["10.0.0.0/8"],
    "networks": [{"name": "web", "allowed_communities": ["65001:200"], "allowed_large_communities": ["65001:9:9"]}],
}})
DOCKER = CONFIG.docker


def endpoint(netns: str, *addresses: str, parent: str = "eth0", ifindex: int = 2) -> Endpoint:
    return Endpoint(netns, "eth0", ifindex, IpvlanMode.L3, parent,
                    tuple(ipaddress.ip_interface(a) for a in addresses), True)


def container(cid: str, sandbox: str | None, *attachments: tuple[str, tuple[str, ...]],
              labels: dict[str, str] | None = None) -> DockerContainer:
    return DockerContainer(
        cid, f"name-{cid}", SANDBOX[sandbox] if sandbox else None,
        tuple(Attachment(n, frozenset(ipaddress.ip_address(a) for a in addrs)) for n, addrs in attachments),
        tuple(sorted((labels or {}).items())),
    )


def view(*containers: DockerContainer) -> DockerView:
    return DockerView({n.id: n for n in (NET_L3, NET_L3S)}, {c.id: c for c in containers})


def kept(result: Any) -> set[str]:
    return {str(a.ip) for e in result.endpoints for a in e.addresses}


def refused(result: Any) -> dict[str, str]:
    return {str(p.network_address): r.reason.value for p, r in result.refused.items()}


def test_only_what_docker_assigned_to_that_endpoint_is_kept() -> None:
    docker = view(container("c1", "/run/docker/netns/aaa", ("n1", ("10.1.100.2", "2001:db8:100::2"))))
    # the container added 10.1.100.99 itself (CAP_NET_ADMIN): Docker did not assign it
    result = check_ownership([endpoint("/run/docker/netns/aaa", "10.1.100.2/24", "10.1.100.99/24",
                                       "2001:db8:100::2/64")], SANDBOX, docker, DOCKER)
    assert kept(result) == {"10.1.100.2", "2001:db8:100::2"}
    assert refused(result) == {"10.1.100.99": "not_assigned_by_docker"}
    assert result.refused[ipaddress.ip_network("10.1.100.99/32")].container == "name-c1"


def test_an_address_of_another_container_is_refused() -> None:
    docker = view(container("c1", "/run/docker/netns/aaa", ("n1", ("10.1.100.2",))),
                  container("c2", "/run/docker/netns/bbb", ("n1", ("10.1.100.3",))))
    result = check_ownership([endpoint("/run/docker/netns/bbb", "10.1.100.2/24", "10.1.100.3/24")], SANDBOX,
                             docker, DOCKER)
    assert kept(result) == {"10.1.100.3"}
    assert refused(result) == {"10.1.100.2": "not_assigned_by_docker"}


def test_an_address_assigned_on_a_network_of_another_parent_is_refused() -> None:
    # Docker gave 10.2.100.5 on the network whose parent is eth1; the slave of eth0 cannot carry it.
    docker = view(container("c1", "/run/docker/netns/aaa", ("n1", ("10.1.100.2",)), ("n2", ("10.2.100.5",))))
    result = check_ownership([endpoint("/run/docker/netns/aaa", "10.1.100.2/24", "10.2.100.5/24"),
                              endpoint("/run/docker/netns/aaa", "10.2.100.5/24", parent="eth1", ifindex=3)],
                             SANDBOX, docker, DOCKER)
    assert [[str(a.ip) for a in e.addresses] for e in result.endpoints] == [["10.1.100.2"], ["10.2.100.5"]]


def test_namespaces_docker_does_not_know() -> None:
    docker = view(container("c1", "/run/docker/netns/aaa", ("n1", ("10.1.100.2",))))
    # a hand-made namespace: Docker's subnets are Docker's; anything else is left to [[networks]]
    result = check_ownership([endpoint("/run/netns/manual", "10.1.100.7/24", "10.9.0.7/24"),
                              endpoint("", "10.1.100.8/24")], SANDBOX, docker, DOCKER)
    assert kept(result) == {"10.9.0.7"}
    assert refused(result) == {"10.1.100.7": "not_assigned_by_docker", "10.1.100.8": "not_assigned_by_docker"}
    assert result.refused[ipaddress.ip_network("10.1.100.7/32")].container == ""


def test_stopped_container_owns_nothing() -> None:
    docker = view(container("c1", None, ("n1", ("10.1.100.2",))))
    result = check_ownership([endpoint("/run/docker/netns/aaa", "10.1.100.2/24")], SANDBOX, docker, DOCKER)
    assert refused(result) == {"10.1.100.2": "not_assigned_by_docker"}


@pytest.mark.parametrize(("value", "advertised"), [("false", False), ("NO", False), ("0", False), ("true", True),
                                                   ("flase", False)])
def test_opt_out_label(value: str, advertised: bool) -> None:
    docker = view(container("c1", "/run/docker/netns/aaa", ("n1", ("10.1.100.2",)),
                            labels={"ipvlan-bgp.advertise": value}))
    result = check_ownership([endpoint("/run/docker/netns/aaa", "10.1.100.2/24")], SANDBOX, docker, DOCKER)
    assert kept(result) == ({"10.1.100.2"} if advertised else set())
    assert refused(result) == ({} if advertised else {"10.1.100.2": "opted_out"})
    assert bool(result.label_problems) == (value == "flase")


def test_extra_communities_only_from_the_networks_allowed_set() -> None:
    labels = {"ipvlan-bgp.communities": "65001:200, 65001:666,junk", "ipvlan-bgp.large-communities": "65001:9:9"}
    docker = view(container("c1", "/run/docker/netns/aaa", ("n1", ("10.1.100.2",)), labels=labels),
                  container("c2", "/run/docker/netns/bbb", ("n2", ("10.2.100.2",)), labels=labels))
    result = check_ownership([endpoint("/run/docker/netns/aaa", "10.1.100.2/24"),
                              endpoint("/run/docker/netns/bbb", "10.2.100.2/24", parent="eth1")],
                             SANDBOX, docker, DOCKER)
    assert kept(result) == {"10.1.100.2", "10.2.100.2"}
    assert result.extras == {ipaddress.ip_network("10.1.100.2/32"): Attributes(
        (Community(65001, 200),), (LargeCommunity(65001, 9, 9),))}  # network "db" allows none
    assert len(result.label_problems) == 6  # on web: 65001:666 and junk; on db (allows none): all four


addresses = st.lists(st.integers(0, 255).map(lambda i: f"10.1.100.{i}"), max_size=6, unique=True)


@given(addresses, addresses, st.booleans())
def test_kept_addresses_are_exactly_the_assigned_ones(present: list[str], assigned: list[str], docker_ns: bool) -> None:
    netns = "/run/docker/netns/aaa" if docker_ns else "/run/netns/manual"
    docker = view(container("c1", "/run/docker/netns/aaa", ("n1", tuple(assigned))))
    result = check_ownership([endpoint(netns, *(f"{a}/24" for a in present))], SANDBOX, docker, DOCKER)
    expected = set(present) & set(assigned) if docker_ns else set()
    assert kept(result) == expected
    assert set(refused(result)) == set(present) - expected  # every address is either kept or refused, not both


def test_networks_supplied_by_docker_are_bounded() -> None:
    strange = DockerNetwork("n3", "wide", "ipvlan", "eth0", "l3s", (ipaddress.ip_network("192.168.0.0/16"),))
    l2 = DockerNetwork("n4", "flat", "ipvlan", "eth0", "l2", (ipaddress.ip_network("10.4.0.0/24"),))
    elsewhere = DockerNetwork("n5", "other", "ipvlan", "eth9", "l3", (ipaddress.ip_network("10.5.0.0/24"),))
    docker = DockerView({n.id: n for n in (NET_L3, NET_L3S, strange, l2, elsewhere)}, {})
    supplied, refusals = docker_networks(docker, CONFIG.uplinks, DOCKER, CONFIG.networks)
    # web's v4 subnet; its v6 subnet has no allowed supernet; db's is inside an operator's [[networks]] entry
    assert [(str(n.prefix), n.name) for n in supplied] == [("10.1.100.0/24", "docker:web")]
    assert {(r.network, str(r.subnet)) for r in refusals} == {("web", "2001:db8:100::/64"),
                                                              ("wide", "192.168.0.0/16")}
    # a supernet as wide as the operator likes, yet a Docker subnet gets the checks a [[networks]] entry gets
    lax = parse_config({**BASE, "docker": {"enabled": True, "allowed_supernets": ["0.0.0.0/0"]}})
    huge = DockerNetwork("n6", "huge", "ipvlan", "eth1", "l3", (ipaddress.ip_network("10.0.0.0/7"),))
    supplied, refusals = docker_networks(DockerView({"n6": huge}, {}), lax.uplinks, lax.docker, lax.networks)
    assert supplied == () and "wider than /8" in refusals[0].reason


def test_docker_config_defaults_and_checks() -> None:
    base = BASE
    config = parse_config(base)
    assert not config.docker.enabled and str(config.docker.socket) == "/run/docker.sock"
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "docker": {"enabled": True, "allowed_supernets": ["10.0.0.1/8"], "bogus": 1,
                                         "networks": [{"name": "a", "allowed_large_communities": ["65001:4242:1"]},
                                                      {"name": "a"}]}})
    text = str(err.value)
    assert "docker.allowed_supernets[0]" in text and "docker.bogus: unknown key" in text
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "docker": {"networks": [{"name": "a", "allowed_large_communities": ["65001:4242:1"]},
                                                      {"name": "a"}]}})
    assert "'a' listed more than once" in str(err.value) and "ownership community" in str(err.value)


INSPECT_CONTAINER: dict[str, Any] = {
    "Id": "c0ffee", "Name": "/web1", "State": {"Running": True},
    "Config": {"Labels": {"ipvlan-bgp.advertise": "false"}},
    "NetworkSettings": {"SandboxKey": "/var/run/docker/netns/1a2b3c", "Networks": {
        "web": {"NetworkID": "n1", "IPAddress": "10.1.100.2", "GlobalIPv6Address": "2001:db8:100::2"},
        "db": {"NetworkID": "n2", "IPAddress": "", "GlobalIPv6Address": ""}}},
}
INSPECT_NETWORK: dict[str, Any] = {
    "Id": "n1", "Name": "web", "Driver": "ipvlan", "Options": {"parent": "eth0", "ipvlan_mode": "l3"},
    "IPAM": {"Config": [{"Subnet": "10.1.100.0/24", "Gateway": "10.1.100.1"}, {"Subnet": "2001:db8:100::/64"}]},
}


def test_inspect_json_to_view() -> None:
    c = container_from_inspect(INSPECT_CONTAINER, stat=lambda path: (9, 42) if path.endswith("1a2b3c") else None)
    assert (c.id, c.name, c.sandbox, c.label("ipvlan-bgp.advertise")) == ("c0ffee", "web1", (9, 42), "false")
    assert c.attachments == (Attachment("n1", frozenset(map(ipaddress.ip_address, ("10.1.100.2", "2001:db8:100::2")))),
                             Attachment("n2", frozenset()))
    stopped = container_from_inspect({**INSPECT_CONTAINER, "State": {"Running": False}}, stat=lambda path: (9, 42))
    assert stopped.sandbox is None
    n = network_from_inspect(INSPECT_NETWORK)
    assert (n.parent, n.mode, [str(s) for s in n.subnets]) == ("eth0", "l3", ["10.1.100.0/24", "2001:db8:100::/64"])
    assert network_from_inspect({"Id": "x", "Driver": "ipvlan", "Options": {"parent": "eth0"}}).mode == "l2"
