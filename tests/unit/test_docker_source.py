"""agent.docker_source against a stand-in Docker engine: the Engine API's few endpoints the source reads, served
on a unix socket in tmp_path by aiohttp (what aiodocker speaks). The real engine is tested in tests/vm."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.docker_source import EVENT_FILTERS, DockerSource

from ..helpers import eventually


class FakeEngine:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.networks: dict[str, dict[str, Any]] = {}
        self.containers: dict[str, dict[str, Any]] = {}
        self.streams: list[asyncio.Queue[dict[str, Any] | None]] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1.41/networks", self._networks)
        app.router.add_get("/v1.41/networks/{id}", self._network)
        app.router.add_get("/v1.41/containers/json", self._containers)
        app.router.add_get("/v1.41/containers/{id}/json", self._container)
        app.router.add_get("/v1.41/events", self._events)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket)).start()

    async def stop(self) -> None:
        for queue in self.streams:
            queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41"})

    async def _networks(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.networks.values()))

    async def _containers(self, request: web.Request) -> web.Response:
        return web.json_response([{"Id": c["Id"]} for c in self.containers.values() if c["State"]["Running"]])

    async def _network(self, request: web.Request) -> web.Response:
        found = self.networks.get(request.match_info["id"])
        return web.json_response(found) if found else web.json_response({"message": "not found"}, status=404)

    async def _container(self, request: web.Request) -> web.Response:
        found = self.containers.get(request.match_info["id"])
        return web.json_response(found) if found else web.json_response({"message": "No such container"}, status=404)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        assert json.loads(request.query["filters"]) == EVENT_FILTERS and "since" in request.query
        response = web.StreamResponse()
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.streams.append(queue)
        while (event := await queue.get()) is not None:
            await response.write(json.dumps(event).encode() + b"\n")
        return response

    def emit(self, event: dict[str, Any]) -> None:
        for queue in self.streams:
            queue.put_nowait(event)

    def run(self, cid: str, sandbox: Path, address: str) -> None:
        self.containers[cid] = {
            "Id": cid, "Name": f"/{cid}", "State": {"Running": True}, "Config": {"Labels": {}},
            "NetworkSettings": {"SandboxKey": str(sandbox), "Networks": {
                "web": {"NetworkID": "n1", "IPAddress": address, "GlobalIPv6Address": ""}}},
        }
        self.emit({"Type": "container", "Action": "start", "Actor": {"ID": cid}})


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[FakeEngine]:
    fake = FakeEngine(tmp_path / "docker.sock")
    fake.networks["n1"] = {"Id": "n1", "Name": "web", "Driver": "ipvlan",
                           "Options": {"parent": "eth0", "ipvlan_mode": "l3"},
                           "IPAM": {"Config": [{"Subnet": "10.1.100.0/24"}]}}
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def source(engine: FakeEngine) -> AsyncIterator[DockerSource]:
    changes: list[int] = []
    src = DockerSource(engine.socket, lambda: changes.append(1))
    task = asyncio.create_task(src.run())
    yield src
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def assigned(source: DockerSource) -> dict[str, set[str]]:
    view = source.view
    assert view is not None
    return {c.name: {str(a) for att in c.attachments for a in att.addresses} for c in view.containers.values()}


async def test_follows_events_and_keeps_the_last_view_while_docker_is_away(
        engine: FakeEngine, source: DockerSource, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sandbox = tmp_path / "sandbox-a"
    sandbox.touch()
    await eventually(lambda: source.connected and bool(engine.streams), what="the source to connect")
    view = source.view
    assert view is not None and [n.name for n in view.networks.values()] == ["web"]
    assert view.networks["n1"].subnets == (ipaddress.ip_network("10.1.100.0/24"),)

    engine.run("a", sandbox, "10.1.100.2")
    await eventually(lambda: assigned(source) == {"a": {"10.1.100.2"}}, what="container a in the view")
    assert source.view is not None
    (container,) = source.view.containers.values()
    assert container.sandbox == (sandbox.stat().st_dev, sandbox.stat().st_ino)

    caplog.set_level(logging.INFO, logger="agent.docker_source")
    await engine.stop()  # Docker goes away: the view stays what it last said
    await eventually(lambda: not source.connected, what="the source to notice")
    await asyncio.sleep(1.5)  # a few reconnection attempts
    assert assigned(source) == {"a": {"10.1.100.2"}}
    lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in lost]  # logged once, not per attempt

    # While away, a was removed and b started: the full listing on return catches up.
    del engine.containers["a"]
    engine.run("b", sandbox, "10.1.100.3")
    engine.streams.clear()
    await engine.start()
    await eventually(lambda: source.connected and assigned(source) == {"b": {"10.1.100.3"}}, timeout=30,
                     what="the view to catch up after Docker returned")

    engine.containers["b"]["State"]["Running"] = False
    engine.emit({"Type": "container", "Action": "die", "Actor": {"ID": "b"}})
    await eventually(lambda: assigned(source) == {}, what="a stopped container to leave the view")
    engine.networks.pop("n1")
    engine.emit({"Type": "network", "Action": "remove", "Actor": {"ID": "n1"}})
    await eventually(lambda: source.view is not None and not source.view.networks, what="the network to go")
