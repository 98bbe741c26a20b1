"""agent.docker_ownership (its Docker view set by hand here: no engine), and Docker's refusals reaching the
reconciler's refusal report (log line, status, metrics) through a real pass against the in-memory gobgpd."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import pytest

from agent import docker_ownership
from agent.docker_ownership import DockerOwnership
from agent.ipam import Attachment, DockerContainer, DockerView
from agent.reconciler import Reconciler
from agent.routes import Refusal, group_by_namespace

from ..fakes import FakeGobgp
from .test_ipam import CONFIG, NET_L3, NET_L3S, SANDBOX, endpoint


def view(*containers: DockerContainer) -> DockerView:
    return DockerView({n.id: n for n in (NET_L3, NET_L3S)}, {c.id: c for c in containers})


def web(cid: str, sandbox: str, address: str, *labels: tuple[str, str]) -> DockerContainer:
    return DockerContainer(cid, cid, SANDBOX[sandbox], (Attachment("n1", frozenset({ipaddress.ip_address(address)})),),
                           labels)


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


ENDPOINTS = [endpoint("/run/docker/netns/aaa", "10.1.100.2/24", "10.1.100.99/24"),
             endpoint("/run/docker/netns/bbb", "10.1.100.3/24")]
DOCKER_SAID = view(web("a", "/run/docker/netns/aaa", "10.1.100.2"),
                   web("quiet", "/run/docker/netns/bbb", "10.1.100.3", ("ipvlan-bgp.advertise", "false")))


async def test_frozen_until_docker_answers_then_networks_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_ownership, "REPORT_GRACE", 0.2)
    passes: list[int] = []
    own = DockerOwnership(CONFIG, lambda: passes.append(1))
    assert own.frozen  # Docker never answered: hold gobgpd's paths
    assert own.apply(ENDPOINTS, SANDBOX, CONFIG).endpoints == tuple(ENDPOINTS)

    own.source.view = DOCKER_SAID
    assert not own.frozen
    result = own.apply(ENDPOINTS, SANDBOX, CONFIG)
    assert [str(n.prefix) for n in result.config.networks] == ["10.2.0.0/16", "10.1.100.0/24"]  # one from Docker
    assert [[str(a.ip) for a in e.addresses] for e in result.endpoints] == [["10.1.100.2"], []]
    # the opt-out is reported at once; the unassigned address is kept out but not reported yet
    quiet = ("/run/docker/netns/bbb:eth0 (container quiet)",)
    assert result.refused == {net("10.1.100.3/32"): (Refusal.OPTED_OUT, quiet)}
    await asyncio.sleep(0.3)
    assert passes, "a pass is requested when the grace period ends"
    result = own.apply(ENDPOINTS, SANDBOX, CONFIG)
    assert result.refused[net("10.1.100.99/32")] == (Refusal.NOT_ASSIGNED_BY_DOCKER,
                                                      ("/run/docker/netns/aaa:eth0 (container a)",))


async def test_an_address_docker_assigns_within_the_grace_period_is_never_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_ownership, "REPORT_GRACE", 0.2)
    own = DockerOwnership(CONFIG, lambda: None)
    own.source.view = view()
    endpoints = [endpoint("/run/docker/netns/aaa", "10.1.100.2/24")]
    assert own.apply(endpoints, SANDBOX, CONFIG).refused == {}  # netlink first: not in Docker's view yet
    own.source.view = view(web("a", "/run/docker/netns/aaa", "10.1.100.2"))  # its start event, a moment later
    await asyncio.sleep(0.3)
    result = own.apply(endpoints, SANDBOX, CONFIG)
    assert [str(a.ip) for a in result.endpoints[0].addresses] == ["10.1.100.2"] and result.refused == {}


async def test_refusals_and_label_communities_through_the_reconciler(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.reconciler")
    own = DockerOwnership(CONFIG, lambda: None)
    own.source.view = view(web("a", "/run/docker/netns/aaa", "10.1.100.2", ("ipvlan-bgp.communities", "65001:200")),
                           DOCKER_SAID.containers["quiet"])
    speaker = FakeGobgp(CONFIG.ownership_community)
    reconciler = Reconciler(speaker, CONFIG)
    filtered = own.apply(ENDPOINTS, SANDBOX, CONFIG)
    reconciler.config, reconciler.extras, reconciler.docker_refused = filtered.config, filtered.extras, filtered.refused
    await reconciler.reconcile(group_by_namespace(filtered.endpoints))
    held = reconciler.actual or {}
    assert set(map(str, held)) == {"10.1.100.2/32", "10.1.100.0/24"}
    assert [str(c) for c in held[net("10.1.100.2/32")].attributes.communities] == ["65001:200"]
    assert reconciler.stats.refused[Refusal.OPTED_OUT] == {net("10.1.100.3/32")}
    assert any("refused 10.1.100.3/32 from /run/docker/netns/bbb:eth0 (container quiet)" in r.getMessage()
               and "opted out" in r.getMessage() for r in caplog.records)
