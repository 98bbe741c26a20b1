"""Docker as a source of metadata: its ipvlan networks and its containers' endpoints, kept current from its
event stream, through aiodocker (the Engine API on the unix socket).

``view`` is an immutable DockerView (agent.ipam), replaced whenever Docker says something changed, and
``on_change`` is called then. While Docker is unreachable or restarting, ``view`` stays what Docker last said
(nothing is withdrawn because Docker is away); the loss is logged once and the view is rebuilt in full when
Docker answers again. Netlink stays the trigger and the truth for liveness: this only adds metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ipam import Attachment, DockerContainer, DockerNetwork, DockerView, NamespaceId
from .model import IPAddress, IPNetwork

if TYPE_CHECKING:
    import aiodocker

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5
RETRY_MAX = 10.0
# Events replayed from a little before the listing, so nothing between subscribing and listing is missed
# (a replayed event only costs a re-inspection).
REPLAY = 2.0
REQUEST_TIMEOUT = 30.0
# What can change a container's sandbox or addresses, or a network; not exec_*, attach, resize...
EVENT_FILTERS = {"type": ["container", "network"],
                 "event": ["start", "die", "destroy", "connect", "disconnect", "create", "remove"]}


class DockerUnavailable(RuntimeError):
    pass


def require_client() -> None:
    try:
        import aiodocker  # noqa: F401
    except ImportError:
        raise DockerUnavailable("[docker] enabled needs the aiodocker package: "
                                "pip install 'ipvlan-bgp-agent[docker]'") from None


def _client(socket: Path) -> aiodocker.Docker:
    require_client()
    import aiodocker
    import aiohttp

    # aiohttp's default is no timeout at all: a wedged dockerd would stall the source for good. (The event
    # stream keeps only the connect timeout.)
    return aiodocker.Docker(url=f"unix://{socket}", timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT,
                                                                                  connect=REQUEST_TIMEOUT))


def _addresses(*texts: str | None) -> frozenset[IPAddress]:
    found = set()
    for text in texts:
        if text:
            with contextlib.suppress(ValueError):
                found.add(ipaddress.ip_address(text))
    return frozenset(found)


def _identity(path: str) -> NamespaceId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def network_from_inspect(data: Mapping[str, Any]) -> DockerNetwork:
    options = data.get("Options") or {}
    subnets: list[IPNetwork] = []
    for pool in (data.get("IPAM") or {}).get("Config") or []:
        with contextlib.suppress(ValueError, TypeError):
            subnets.append(ipaddress.ip_network(pool.get("Subnet"), strict=False))
    return DockerNetwork(id=data["Id"], name=data.get("Name", ""), driver=data.get("Driver", ""),
                         parent=options.get("parent", ""), mode=options.get("ipvlan_mode", "l2"),
                         subnets=tuple(subnets))


def container_from_inspect(data: Mapping[str, Any], stat: Callable[[str], NamespaceId | None] = _identity
                           ) -> DockerContainer:
    settings = data.get("NetworkSettings") or {}
    running = bool((data.get("State") or {}).get("Running"))
    sandbox_key = settings.get("SandboxKey") or ""
    attachments = tuple(
        Attachment(net.get("NetworkID", ""), _addresses(net.get("IPAddress"), net.get("GlobalIPv6Address")))
        for net in (settings.get("Networks") or {}).values()
    )
    labels = (data.get("Config") or {}).get("Labels") or {}
    return DockerContainer(
        id=data["Id"],
        name=data.get("Name", "").lstrip("/"),
        sandbox=stat(sandbox_key) if running and sandbox_key else None,
        attachments=attachments,
        labels=tuple(sorted(labels.items())),
    )


class DockerSource:
    def __init__(self, socket: Path, on_change: Callable[[], None]) -> None:
        self.socket = socket
        self.view: DockerView | None = None  # None until Docker first answered
        self.connected = False
        self.updates = 0  # views published (tests and diagnostics)
        self._on_change = on_change

    def _publish(self, view: DockerView) -> None:
        if view != self.view:
            self.view = view
            self.updates += 1
            self._on_change()

    async def run(self) -> None:
        """Follow Docker until cancelled, reconnecting with back-off."""
        retry = RETRY_FIRST
        lost_logged = False
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except DockerUnavailable:
                raise
            except Exception as exc:  # unreachable, restarting, a broken stream: keep the last view
                if self.connected or not lost_logged:
                    kept = "keeping its last view" if self.view is not None else "addresses are not checked yet"
                    log.warning("Docker at %s unreachable (%s): %s; retrying", self.socket, _describe(exc), kept)
                    lost_logged = True
                if self.connected:
                    retry = RETRY_FIRST
                self.connected = False
            await asyncio.sleep(retry)
            retry = min(retry * 2, RETRY_MAX)

    async def _session(self) -> None:
        docker = _client(self.socket)
        try:
            since = time.time() - REPLAY
            events = docker.events.subscribe(  # type: ignore[no-untyped-call]
                filters=json.dumps(EVENT_FILTERS), since=str(int(since)))
            listed = await docker.networks.list(filters={"driver": "ipvlan"})  # as complete as an inspection
            networks = {n.id: n for n in map(network_from_inspect, listed)}
            containers = {}
            for summary in await docker.containers.list():
                container = await self._inspect(docker, summary.id)
                if container is not None and container.sandbox is not None:
                    containers[container.id] = container
            self._publish(DockerView(networks, containers))
            if not self.connected:
                log.info("Docker at %s: %d ipvlan network(s), %d container(s)", self.socket, len(networks),
                         len(containers))
            self.connected = True
            while True:
                batch = [await events.get()]
                while not events.queue.empty():
                    batch.append(events.queue.get_nowait())
                if any(event is None for event in batch):
                    raise ConnectionError("Docker's event stream ended")
                await self._apply(docker, batch)
        finally:
            await docker.close()

    async def _inspect(self, docker: aiodocker.Docker, container_id: str) -> DockerContainer | None:
        import aiodocker

        try:
            data = await docker.containers.container(container_id).show()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise
        return container_from_inspect(data)

    async def _network(self, docker: aiodocker.Docker, network_id: str) -> DockerNetwork | None:
        import aiodocker
        from aiodocker.networks import DockerNetwork as NetworkHandle

        try:
            return network_from_inspect(await NetworkHandle(docker, network_id).show())  # type: ignore[no-untyped-call]
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise

    async def _apply(self, docker: aiodocker.Docker, events: list[dict[str, Any]]) -> None:
        assert self.view is not None
        containers: set[str] = set()
        networks: set[str] = set()
        for event in events:
            actor = event.get("Actor") or {}
            if event.get("Type") == "container":
                containers.add(actor.get("ID", ""))
            elif event.get("Type") == "network":
                if event.get("Action") in ("connect", "disconnect"):
                    containers.add((actor.get("Attributes") or {}).get("container", ""))
                else:
                    networks.add(actor.get("ID", ""))
        containers.discard("")
        networks.discard("")
        new_networks = dict(self.view.networks)
        for network_id, network in zip(networks, await asyncio.gather(
                *(self._network(docker, n) for n in networks)), strict=True):
            if network is None or network.driver != "ipvlan":
                new_networks.pop(network_id, None)
            else:
                new_networks[network_id] = network
        new_containers = dict(self.view.containers)
        for container_id, container in zip(containers, await asyncio.gather(
                *(self._inspect(docker, c) for c in containers)), strict=True):
            if container is None or container.sandbox is None:
                new_containers.pop(container_id, None)
            else:
                new_containers[container_id] = container
        self._publish(DockerView(new_networks, new_containers))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
