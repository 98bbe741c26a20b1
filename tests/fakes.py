"""In-memory stand-ins for the agent's edges: a gobgpd that can also fail on demand, and a discovery.

``FakeGobgp`` keeps a global RIB like gobgpd's (anyone's paths, by prefix) and behaves like the real
client where it matters: every write must carry the ownership community, a batch goes in batches of
``batch`` paths and a stream broken at batch k leaves the batches before k applied.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

from agent.discovery import DiscoveryStats
from agent.endpoints import Endpoint, flatten
from agent.gobgp import (
    BgpInfo,
    GobgpEvent,
    GobgpEventKind,
    GobgpRejected,
    GobgpUnavailable,
    PeerInfo,
)
from agent.model import IPAddress, IPNetwork, LargeCommunity, Route
from agent.routes import group_by_namespace

FAKE_PEER = "192.0.2.254"


class FakeGobgp:
    """A gobgpd in memory. Failure knobs (each applies to the next write call, then resets, unless noted):

    * ``reject``: the next write raises GobgpRejected and changes nothing;
    * ``drop_at_batch = k``: the next write applies batches 0..k-1, then the stream breaks (GobgpUnavailable);
    * ``restart()``: the RIB empties; the watch stream sees LOST then READY; with ``hold_back()``, the neighbor
      is held back again (administratively down, as the shipped gobgpd.toml starts it);
    * ``hang()``: every call waits until ``release()`` (the API does not answer; stays until released);
    * ``down``: every call raises GobgpUnavailable (stays until cleared).
    """

    def __init__(self, owner: LargeCommunity, batch: int = 1000) -> None:
        self.owner = owner
        self.batch = batch
        self.rib: dict[IPNetwork, Route] = {}
        self.writes = 0  # write calls that reached the RIB (fully or in part)
        self.paths_written = 0
        self.reads = 0  # list_owned_paths calls
        self.counts = 0  # path_count calls (the cheap drift check)
        self.reject = False
        self.drop_at_batch: int | None = None
        self.down = False
        self.closed = False
        self._released = asyncio.Event()
        self._released.set()
        self._events: asyncio.Queue[GobgpEvent] = asyncio.Queue()
        self._events.put_nowait(GobgpEvent(GobgpEventKind.READY))
        self.peers = [PeerInfo(FAKE_PEER, 65000, "established", 1.0)]  # the one ToR peer
        self.holds_back = False
        self.enabled_with: list[int] = []  # the RIB's size at each EnablePeer
        self.peer_lists = 0  # list_peers calls

    # -- failure knobs
    def hold_back(self) -> None:
        """The neighbor as a (re)started gobgpd with ``admin-down = true`` has it: down, never up."""
        self.holds_back = True
        self.peers = [PeerInfo(FAKE_PEER, 65000, "idle", None, downtime=1.0, admin_down=True,
                               configured_admin_down=True)]

    def hang(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def restart(self) -> None:
        self.rib.clear()
        if self.holds_back:
            self.hold_back()
        self._events.put_nowait(GobgpEvent(GobgpEventKind.LOST, "fake restart"))
        self._events.put_nowait(GobgpEvent(GobgpEventKind.READY))

    def delete_behind_our_back(self, prefix: IPNetwork) -> None:
        del self.rib[prefix]

    def owned(self) -> dict[IPNetwork, Route]:
        return {p: r for p, r in self.rib.items() if r.owned_by(self.owner)}

    # -- the BgpSpeaker protocol
    async def _answer(self) -> None:
        await self._released.wait()
        if self.down:
            raise GobgpUnavailable("fake gobgpd: down")

    async def _write(self, routes: Sequence[Route], withdraw: bool) -> None:
        await self._answer()
        for route in routes:
            if not route.owned_by(self.owner):
                raise ValueError(f"refusing to write {route.prefix} without the ownership community")
        if not routes:
            return
        if self.reject:
            self.reject = False
            raise GobgpRejected("fake gobgpd: rejected")
        batches = [routes[i:i + self.batch] for i in range(0, len(routes), self.batch)]
        drop_at, self.drop_at_batch = self.drop_at_batch, None
        self.writes += 1
        for k, batch in enumerate(batches):
            if drop_at is not None and k >= drop_at:
                raise GobgpUnavailable(f"fake gobgpd: stream broken at batch {k}")
            for route in batch:
                self.paths_written += 1
                if withdraw:
                    self.rib.pop(route.prefix, None)
                else:
                    self.rib[route.prefix] = route

    async def connect(self, timeout: float = 10.0) -> BgpInfo:
        await self._answer()
        return BgpInfo(asn=65001, router_id="192.0.2.1")

    async def add_paths(self, routes: Sequence[Route]) -> None:
        await self._write(routes, withdraw=False)

    async def delete_paths(self, routes: Sequence[Route]) -> None:
        await self._write(routes, withdraw=True)

    async def list_owned_paths(self, version: int) -> list[Route]:
        await self._answer()
        self.reads += 1
        return sorted((r for r in self.owned().values() if r.version == version), key=lambda r: r.sort_key)

    async def path_count(self, version: int) -> int:
        await self._answer()
        self.counts += 1
        return sum(1 for p in self.rib if p.version == version)

    async def list_peers(self) -> list[PeerInfo]:
        await self._answer()
        self.peer_lists += 1
        return [dataclasses.replace(p, accepted=1, advertised=len(self.rib), received=1) if p.established else p
                for p in self.peers]

    def set_peer_state(self, state: str) -> None:
        """The ToR session moves to ``state`` (gobgpd's name, lower case); the watch stream sees a PEER event."""
        self.peers = [dataclasses.replace(p, state=state) for p in self.peers]
        self._events.put_nowait(GobgpEvent(GobgpEventKind.PEER, f"{FAKE_PEER} {state}"))

    async def enable_peer(self, address: str) -> None:
        await self._answer()
        self.enabled_with.append(len(self.rib))
        self.peers = [dataclasses.replace(p, admin_down=False, state="established", uptime=2.0)
                      if p.address == address else p for p in self.peers]

    async def watch(self) -> AsyncIterator[GobgpEvent]:
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        self.closed = True


class FakeDiscovery:
    """Endpoints set by the test; ``set()`` announces a change like netlink would."""

    def __init__(self, endpoints: Iterable[Endpoint] = ()) -> None:
        self.missing_uplinks: tuple[str, ...] = ()  # configured uplinks the host lacks
        self.endpoints = tuple(endpoints)
        self.synced = asyncio.Event()
        self.rescan_interval = 10.0
        self.uplinks: tuple[str, ...] = ()
        self.netns_dirs: tuple[Path, ...] = ()
        self.closed = False
        self.fail_with: BaseException | None = None  # run() raises this once, when set before it starts
        self.runs = 0
        self.host = frozenset[IPAddress]()  # the host's own addresses (never advertised from a container)
        self._callbacks: list[Callable[[], None]] = []
        self._grouped: tuple[tuple[Endpoint, ...], dict[str, tuple[Endpoint, ...]]] = ((), {})

    def set(self, *endpoints: Endpoint) -> None:
        self.endpoints = tuple(endpoints)
        self.notify()

    def notify(self) -> None:
        for callback in self._callbacks:
            callback()

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def by_namespace(self) -> dict[str, tuple[Endpoint, ...]]:
        if self._grouped[0] is not self.endpoints:  # the same tuples while unchanged, as discovery does
            before = self._grouped[1]
            grouped = {netns: before[netns] if before.get(netns) == found else found
                       for netns, found in group_by_namespace(self.endpoints).items()}
            self._grouped = (self.endpoints, grouped)
        return self._grouped[1]

    def snapshot(self) -> tuple[Endpoint, ...]:
        return flatten(self.by_namespace())

    def host_addresses(self) -> frozenset[IPAddress]:
        return self.host

    def namespace_ids(self) -> dict[str, tuple[int, int]]:
        return {}

    def stats(self) -> DiscoveryStats:
        return DiscoveryStats(namespaces=1, resyncs=0, missing_uplinks=self.missing_uplinks)

    def reconfigure(self, uplinks: Iterable[str], netns_dirs: Iterable[Path], rescan_interval: float) -> None:
        self.uplinks, self.netns_dirs, self.rescan_interval = tuple(uplinks), tuple(netns_dirs), rescan_interval

    async def run(self) -> None:
        self.runs += 1
        if self.fail_with is not None:
            failure, self.fail_with = self.fail_with, None
            raise failure
        self.synced.set()
        self.notify()
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.closed = True
