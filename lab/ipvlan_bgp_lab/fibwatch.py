"""Watch a namespace's kernel FIB from one in-process netlink socket (no `ip` per poll).

Records every IPv4 and IPv6 route added or removed, with a monotonic timestamp, and keeps the current set of
routes by prefix, so a test can both wait for a route and prove a route was never withdrawn. If the
socket overflows anyway (ENOBUFS: a burst of 10,000 routes outran a 4 MB buffer in the emulated VM),
``overflows`` counts it and a fresh dump records the difference, as events at the time of the dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE

from agent.netns import open_netlink_in

EVENT_BUFFER = 64 << 20
SO_RCVBUFFORCE = 33  # not in Python's socket module


@dataclass(frozen=True)
class RouteEvent:
    at: float
    added: bool
    prefix: str
    gateways: tuple[str, ...]


@dataclass
class FibWatch:
    netns: Path
    events: list[RouteEvent] = field(default_factory=list)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    overflows: int = 0  # times the event socket overflowed: events in between are known only from a re-dump
    _task: asyncio.Task[None] | None = None

    async def start(self) -> FibWatch:
        sock = open_netlink_in(str(self.netns), EVENT_BUFFER)
        keep = socket.socket(fileno=os.dup(sock.fileno()))  # the same socket, to set its buffer again below
        groups = RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
        events = AsyncIPRoute(fileno=sock.detach(), groups=groups)
        await events.bind(groups=groups)
        with keep:  # pyroute2 has set SO_RCVBUF to its own 1 MB (capped by rmem_max): force ours back
            keep.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, EVENT_BUFFER)
        await self._dump(record=False)
        self._task = asyncio.create_task(self._run(events))
        return self

    async def _dump(self, record: bool) -> None:
        before = dict(self.routes)
        self.routes.clear()
        requests = AsyncIPRoute(fileno=open_netlink_in(str(self.netns), 4 << 20).detach())
        try:
            for family in (2, 10):
                async for msg in await requests.route("dump", family=family):
                    self._apply(msg, record=False)
        finally:
            requests.close()
        if record:
            now = time.monotonic()
            self.events += [RouteEvent(now, False, p, g) for p, g in before.items() if p not in self.routes]
            self.events += [RouteEvent(now, True, p, g) for p, g in self.routes.items() if before.get(p) != g]
            self.changed.set()

    async def _run(self, events: AsyncIPRoute) -> None:
        try:
            while True:
                try:
                    async for msg in events.get():
                        self._apply(msg, record=True)
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self.overflows += 1
                    await self._dump(record=True)
        finally:
            events.close()

    def _apply(self, msg: object, record: bool) -> None:
        get = msg.get_attr  # type: ignore[attr-defined]
        if get("RTA_TABLE") not in (None, 254):  # main table only
            return
        dst = get("RTA_DST") or ("::" if msg["family"] == 10 else "0.0.0.0")  # type: ignore[index]
        prefix = f"{dst}/{msg['dst_len']}"  # type: ignore[index]
        gateway = get("RTA_GATEWAY")
        if gateway:
            gateways: tuple[str, ...] = (gateway,)
        else:
            gateways = tuple(h.get_attr("RTA_GATEWAY") for h in (get("RTA_MULTIPATH") or []))
        added = msg.get("event") == "RTM_NEWROUTE"  # type: ignore[attr-defined]
        if added:
            self.routes[prefix] = gateways
        else:
            self.routes.pop(prefix, None)
        if record:
            self.events.append(RouteEvent(time.monotonic(), added, prefix, gateways))
            self.changed.set()

    async def wait_for(self, prefix: str, present: bool = True, timeout: float = 60.0) -> float:
        """Wait until ``prefix`` is (or is not) in the FIB; return the monotonic time it happened."""
        deadline = time.monotonic() + timeout
        while (prefix in self.routes) != present:
            if self._task is not None and self._task.done():
                self._task.result()  # the watch died: say why instead of timing out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{prefix} {'never appeared in' if present else 'never left'} {self.netns}'s FIB")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                continue
        relevant = [e.at for e in self.events if e.prefix == prefix and e.added == present]
        return relevant[-1] if relevant else time.monotonic()

    def withdrawals(self, prefixes: set[str], since: float = 0.0) -> list[RouteEvent]:
        return [e for e in self.events if not e.added and e.prefix in prefixes and e.at >= since]

    async def stop(self) -> None:
        if self._task is not None:  # a watch that crashed re-raises here, so a test using it fails
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
