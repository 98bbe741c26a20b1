"""The metrics endpoint serves scrapes on the agent's loop with bounded connections and idle time: 300 idle
clients neither make 300 threads nor stay open, and a scrape still gets through."""

from __future__ import annotations

import asyncio
import socket
import threading

from agent.metrics import Metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scrape(port: int, request: bytes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_300_idle_connections_take_no_threads_and_are_closed() -> None:
    metrics = Metrics()
    metrics.netlink_dropped.labels(reason="forged").inc(3)
    port = free_port()
    await metrics.serve(f"127.0.0.1:{port}", max_connections=16, timeout=0.5)
    threads = threading.active_count()
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
    try:
        assert threading.active_count() == threads
        # every one of them is closed: at once past the limit, after the timeout otherwise
        closed = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in idle)), 10)
        assert closed == [b""] * 300
        answer = await scrape(port)
        assert answer.startswith(b"HTTP/1.1 200 OK") and b'ipvlan_bgp_netlink_dropped_total{reason="forged"} 3.0' \
            in answer
        assert (await scrape(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await scrape(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
    finally:
        for _, writer in idle:
            writer.close()
        metrics.close()
