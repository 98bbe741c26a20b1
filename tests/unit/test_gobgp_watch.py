"""GobgpClient.watch() outlives a rejected WatchEvent (no gobgpd needed: the stub is replaced)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent.gobgp import BgpInfo, GobgpClient, GobgpEvent, GobgpEventKind
from agent.model import LargeCommunity


async def test_watch_survives_a_rejected_watch_event() -> None:
    client = GobgpClient("127.0.0.1:1", LargeCommunity(65001, 4242, 1))
    calls = 0
    resubscribed = asyncio.Event()

    async def get_bgp(timeout: float | None = None) -> BgpInfo:
        return BgpInfo(65001, "192.0.2.1")

    async def watch_event(request: Any) -> AsyncIterator[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       "bad request", None)
        resubscribed.set()
        await asyncio.Event().wait()
        yield None

    client.get_bgp = get_bgp  # type: ignore[method-assign]
    client._stub = type("Stub", (), {"WatchEvent": staticmethod(watch_event)})()
    events: list[GobgpEvent] = []

    async def consume() -> None:
        async for event in client.watch(retry_backoff=0.01):
            events.append(event)

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(resubscribed.wait(), 5)
        assert not task.done()
        assert [e.kind for e in events] == [GobgpEventKind.READY]  # no LOST: gobgpd answered all along
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
