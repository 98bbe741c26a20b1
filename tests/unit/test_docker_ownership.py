"""agent.docker_ownership: what a pass asks of Docker (its view set by hand here: no engine)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import pytest

from agent import docker_ownership
from agent.docker_ownership import DockerOwnership
from agent.ipam import Attachment, DockerContainer, DockerView

from .test_ipam import CONFIG, NET_L3, NET_L3S, SANDBOX, endpoint


def view(*containers: DockerContainer) -> DockerView:
    return DockerView({n.id: n for n in (NET_L3, NET_L3S)}, {c.id: c for c in containers})


def web(cid: str, sandbox: str, address: str, **labels: str) -> DockerContainer:
    return DockerContainer(cid, cid, SANDBOX[sandbox], (Attachment("n1", frozenset({ipaddress.ip_address(address)})),),
                           tuple(labels.items()))


async def test_frozen_until_docker_answers_then_networks_and_refusals(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(docker_ownership, "LOG_GRACE", 0.2)
    caplog.set_level(logging.INFO, logger="agent.docker_ownership")
    passes: list[int] = []
    own = DockerOwnership(CONFIG, lambda: passes.append(1))
    endpoints = [endpoint("/run/docker/netns/aaa", "10.1.100.2/24", "10.1.100.99/24"),
                 endpoint("/run/docker/netns/bbb", "10.1.100.3/24")]
    assert own.frozen  # Docker never answered: hold gobgpd's paths
    assert own.apply(endpoints, SANDBOX, CONFIG).endpoints == tuple(endpoints)

    own.source.view = view(web("a", "/run/docker/netns/aaa", "10.1.100.2"),
                           DockerContainer("b", "quiet", SANDBOX["/run/docker/netns/bbb"],
                                           (Attachment("n1", frozenset({ipaddress.ip_address("10.1.100.3")})),),
                                           (("ipvlan-bgp.advertise", "false"),)))
    assert not own.frozen
    result = own.apply(endpoints, SANDBOX, CONFIG)
    assert [str(n.prefix) for n in result.config.networks] == ["10.2.0.0/16", "10.1.100.0/24"]  # one from Docker
    assert [[str(a.ip) for a in e.addresses] for e in result.endpoints] == [["10.1.100.2"], []]
    messages = [r.getMessage() for r in caplog.records]
    assert any("10.1.100.3/32" in m and "(container quiet): opted_out" in m for m in messages)  # at once
    assert not any("10.1.100.99" in m for m in messages)  # Docker may not have told us yet: wait
    await asyncio.sleep(0.3)
    assert passes, "a pass is requested when the grace period ends"
    own.apply(endpoints, SANDBOX, CONFIG)
    own.apply(endpoints, SANDBOX, CONFIG)
    logged = [r.getMessage() for r in caplog.records if "10.1.100.99/32" in r.getMessage()]
    assert len(logged) == 1 and "not_assigned_by_docker" in logged[0]
    assert own.refused_by_reason() == {"not_assigned_by_docker": {ipaddress.ip_network("10.1.100.99/32")},
                                       "opted_out": {ipaddress.ip_network("10.1.100.3/32")}}


async def test_an_address_docker_assigns_within_the_grace_period_is_never_logged(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(docker_ownership, "LOG_GRACE", 0.2)
    own = DockerOwnership(CONFIG, lambda: None)
    own.source.view = view()
    endpoints = [endpoint("/run/docker/netns/aaa", "10.1.100.2/24")]
    own.apply(endpoints, SANDBOX, CONFIG)  # netlink first: the container is not in Docker's view yet
    own.source.view = view(web("a", "/run/docker/netns/aaa", "10.1.100.2"))  # its start event, a moment later
    await asyncio.sleep(0.3)
    assert [str(a.ip) for a in own.apply(endpoints, SANDBOX, CONFIG).endpoints[0].addresses] == ["10.1.100.2"]
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
