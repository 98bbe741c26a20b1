"""How the client reaches gobgpd: a unix: socket, TLS with the configured CA, and ListPath's per-reply
deadline (against a stand-in server that stalls mid-stream)."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from ipvlan_bgp_lab.gobgpd import GOBGPD, free_port, global_config

from agent.gobgp import GobgpClient, GobgpUnavailable, route_to_path
from agent.gobgpapi import gobgp_pb2 as api
from agent.gobgpapi import gobgp_pb2_grpc as api_grpc
from agent.model import Attributes, Route

from .conftest import OWNER

pytestmark = pytest.mark.gobgpd


def owned_route(prefix: str) -> Route:
    return Route(ipaddress.ip_network(prefix), None, Attributes(large_communities=(OWNER,)))


@pytest.fixture
def start_gobgpd(tmp_path: Path) -> Iterator[object]:
    """Start gobgpd with extra API flags; every one started is stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*api_flags: str) -> None:
        conf = tmp_path / f"gobgpd{len(procs)}.toml"
        conf.write_text(global_config(65001, "10.255.0.1"))
        with (tmp_path / f"gobgpd{len(procs)}.log").open("wb") as log:
            procs.append(subprocess.Popen([GOBGPD, "-f", str(conf), "-t", "toml", "--pprof-disable", *api_flags],
                                          stdout=log, stderr=subprocess.STDOUT))

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


async def test_unix_socket_target(start_gobgpd: object, tmp_path: Path) -> None:
    sock = tmp_path / "gobgpd.sock"
    start_gobgpd(f"--api-hosts=unix://{sock}")  # type: ignore[operator]
    async with GobgpClient(f"unix://{sock}", OWNER) as client:
        await client.connect(timeout=15)
        await client.add_paths([owned_route("10.1.100.2/32")])
        assert [str(r.prefix) for r in await client.list_owned_paths(4)] == ["10.1.100.2/32"]


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_tls_with_the_configured_ca(start_gobgpd: object, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "gobgpd.test")
    other_ca, _ = self_signed(tmp_path, "someone-else.test")
    target = f"127.0.0.1:{free_port()}"
    start_gobgpd(f"--api-hosts={target}", "--tls", f"--tls-cert-file={cert}", f"--tls-key-file={key}")  # type: ignore[operator]
    async with GobgpClient(target, OWNER, tls_ca_file=cert, tls_server_name="gobgpd.test") as client:
        await client.connect(timeout=15)
        await client.add_paths([owned_route("10.1.100.3/32")])
        assert [str(r.prefix) for r in await client.list_owned_paths(4)] == ["10.1.100.3/32"]
    # the same server refuses a client that trusts another CA, or speaks plaintext
    for kwargs in ({"tls_ca_file": other_ca, "tls_server_name": "gobgpd.test"}, {}):
        async with GobgpClient(target, OWNER, **kwargs) as client:  # type: ignore[arg-type]
            with pytest.raises(GobgpUnavailable):
                await client.connect(timeout=2)


class StallingListPath(api_grpc.GobgpApiServicer):
    """ListPath sends ``replies`` replies ``gap`` seconds apart, then (``stall``) stops sending without ending."""

    def __init__(self, replies: int, gap: float, stall: bool) -> None:
        self.replies, self.gap, self.stall = replies, gap, stall

    async def ListPath(self, request: api.ListPathRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[api.ListPathResponse]:
        for i in range(self.replies):
            path = route_to_path(owned_route(f"10.1.100.{i + 1}/32"))
            yield api.ListPathResponse(destination=api.Destination(prefix=f"10.1.100.{i + 1}/32", paths=[path]))
            await asyncio.sleep(self.gap)
        if self.stall:
            await asyncio.sleep(3600)


async def serve(servicer: api_grpc.GobgpApiServicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    api_grpc.add_GobgpApiServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_list_path_deadline_is_per_reply_not_per_call() -> None:
    # 6 replies 0.3 s apart: 1.5 s in all, three times rpc_timeout, yet no gap exceeds it
    server, target = await serve(StallingListPath(6, 0.3, stall=False))
    try:
        async with GobgpClient(target, OWNER, rpc_timeout=0.6) as client:
            assert len(await client.list_owned_paths(4)) == 6
    finally:
        await server.stop(None)


async def test_list_path_stalled_mid_stream_times_out() -> None:
    server, target = await serve(StallingListPath(2, 0.0, stall=True))
    try:
        async with GobgpClient(target, OWNER, rpc_timeout=0.5) as client:
            with pytest.raises(GobgpUnavailable, match=r"no reply for 0\.5 s"):  # outer bound: fail, never hang
                await asyncio.wait_for(client.list_owned_paths(4), 60)
    finally:
        await server.stop(None)
