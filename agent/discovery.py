"""Endpoint discovery: netlink in the agent's own namespace and in every container namespace.

Namespaces are found in the configured directories (inotify for speed, a periodic rescan as a safety
net). Each namespace gets two netlink sockets (events and requests, see agent.rtnl), opened inside it
with setns(2) on a helper thread (no fork: the process also runs gRPC); the first is subscribed to link
and address events, then the namespace is dumped through the second. On any netlink
error - ENOBUFS after an event burst included - the namespace is dumped again from scratch, so the view
is never stale. ``by_namespace()`` returns the complete, immutable set of endpoints, namespace by
namespace; every callback given to ``subscribe`` is called whenever it may differ from the last one (cheap
and often: consumers coalesce).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .endpoints import (
    OWN_NAMESPACE,
    Endpoint,
    endpoint_of,
    endpoints_in,
    flatten,
    ignored_in,
    missing_uplinks,
    printable,
    uplink_ifindexes,
)
from .model import IPAddress
from .netlink_types import Link, NamespaceView
from .netns import DirectoryEvents, NamespaceGone, is_nsfs, namespace_identity, open_netlink_in
from .rtnl import DROP_REASONS, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK, Dump, RtnlSocket, changes

log = logging.getLogger(__name__)

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
OWN_RCVBUF = 8 * 1024 * 1024
CONTAINER_RCVBUF = 4 * 1024 * 1024  # ~4,000 queued events (an skb costs ~1 KiB): seconds of a 1,000/s storm
DUMP_ATTEMPTS = 5
UNMOUNTED_RETRY = 0.02  # seconds between looks at a namespace file that is not mounted yet
UNMOUNTED_PATIENCE = 5.0  # after this, an unmounted file waits for the regular rescan
def _close_result(future: asyncio.Future[socket.socket]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def _unsigned_nsid(value: int | None) -> int | None:
    return None if value is None or value < 0 or value >= 2**31 else value


@dataclass
class _Derived:
    """What a watcher derived from its view, and from what."""

    view: NamespaceView
    own_nsid: int | None
    uplinks: dict[int, str]
    by_ifindex: dict[int, Endpoint]
    endpoints: tuple[Endpoint, ...]


class NamespaceWatcher:
    """Keeps the NamespaceView of one namespace true: dump, then events; re-dump after any error."""

    def __init__(self, path: str | None, on_change: Callable[[], None], opener: ThreadPoolExecutor, rcvbuf: int,
                 own_ns_fd: int) -> None:
        self.path = path
        self.view: NamespaceView | None = None  # None until the first dump completes
        self.resyncs = 0
        self.dropped: Counter[str] = Counter()  # datagrams not believed, by reason (agent.rtnl.DROP_REASONS)
        self.interrupted_dumps = 0  # tables taken as the union of interrupted dumps (none was clean)
        self.synced = asyncio.Event()
        self.gone = False
        self._on_change = on_change
        self._opener = opener
        self._rcvbuf = rcvbuf
        self._own_ns_fd = own_ns_fd
        self._derived: _Derived | None = None
        self._session_synced = False  # the current session completed its dump

    def endpoints(self, uplinks: dict[int, str]) -> tuple[Endpoint, ...]:
        """The endpoints of this namespace: the same tuple while nothing in it changed, and otherwise only the
        links that changed re-derived (the others keep their Endpoint objects, so consumers skip them too)."""
        view = self.view
        if view is None:
            return ()
        derived = self._derived
        if derived is None or derived.view is not view or derived.own_nsid != view.own_nsid \
                or derived.uplinks != uplinks:
            view.changed.clear()
            found = endpoints_in(self.path or OWN_NAMESPACE, view, uplinks, own=self.path is None)
            derived = self._derived = _Derived(view, view.own_nsid, dict(uplinks),
                                               {e.ifindex: e for e in found}, tuple(found))
            return derived.endpoints
        if view.changed:
            netns, own = self.path or OWN_NAMESPACE, self.path is None
            for ifindex in view.changed:
                link = view.links.get(ifindex)
                endpoint = None if link is None else endpoint_of(netns, link, view, uplinks, own)
                if endpoint is None:
                    derived.by_ifindex.pop(ifindex, None)
                else:
                    derived.by_ifindex[ifindex] = endpoint
            view.changed.clear()
            derived.endpoints = tuple(derived.by_ifindex[i] for i in sorted(derived.by_ifindex))
        return derived.endpoints

    @property
    def label(self) -> str:
        return printable(self.path or "(own namespace)")

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
            except NamespaceGone as exc:
                log.debug("namespace %s: %s", self.label, exc)
                self._drop(gone=True)
                return
            except Exception as exc:  # netlink errors (ENOBUFS, ...): start over with a fresh dump
                self.resyncs += 1
                # a session that got as far as a complete view was a success: its failure starts a new count
                failures = 1 if self._session_synced else min(failures + 1, 8)
                if self.path is not None and not is_nsfs(self.path):
                    self._drop(gone=True)
                    return
                log.warning("netlink resync in %s after %s", self.label, _describe(exc),
                            extra={"namespace": self.label, "reason": _describe(exc), "count": self.resyncs})
                await asyncio.sleep(_resync_delay(failures))

    def _drop(self, gone: bool) -> None:
        self.gone = gone
        if self.view is not None:
            self.view = None
            self._on_change()
        self.synced.set()

    async def _session(self) -> None:
        # Two sockets: the event socket never sends, so every message on it is an event; replies to our
        # requests arrive on the other one.
        self._session_synced = False
        events = RtnlSocket(await self._open(self._rcvbuf), self.dropped)
        requests: RtnlSocket | None = None
        try:
            events.subscribe(GROUPS)  # before the dump, so no change falls in between
            requests = RtnlSocket(await self._open(1 << 20), self.dropped)
            view = NamespaceView()
            for dump in (requests.dump_links, requests.dump_addresses):
                await self._dump_into(view, dump)
            view.own_nsid = await self._own_nsid(requests)
            self.view = view
            self._session_synced = True
            self._on_change()
            self.synced.set()
            while True:
                for datagram in await events.receive():
                    for change in changes(datagram):
                        view.apply(change)
                        if isinstance(change, Link) and change.parent_nsid is not None \
                                and _unsigned_nsid(change.parent_nsid) != view.own_nsid:
                            # A slave just moved in may be the first thing that gave our namespace an id here.
                            view.own_nsid = await self._own_nsid(requests)
                self._on_change()
        finally:
            events.close()
            if requests is not None:
                requests.close()

    async def _dump_into(self, view: NamespaceView, dump: Callable[[], Awaitable[Dump]]) -> None:
        """One table into ``view``. A dump the kernel marks interrupted (the table changed under it, so entries
        may be skipped) is repeated and the results merged: every dump starts after the event subscription,
        so whatever one dump shows that is gone later has an event, applied after the dumps, that removes it.
        Under a sustained storm of changes a clean dump may never come; then the merge of several is used."""
        for _ in range(DUMP_ATTEMPTS):
            result = await dump()
            for change in result.changes:
                view.apply(change)
            if not result.interrupted:
                return
        self.interrupted_dumps += 1
        log.warning("%s: %d dumps in a row interrupted by changes; using their union", self.label, DUMP_ATTEMPTS)

    async def _open(self, rcvbuf: int) -> socket.socket:
        future = asyncio.get_running_loop().run_in_executor(self._opener, open_netlink_in, self.path, rcvbuf)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:  # the socket still arrives: close it then, or it leaks
            future.add_done_callback(_close_result)
            raise

    async def _own_nsid(self, requests: RtnlSocket) -> int | None:
        if self.path is None:
            return None
        return await requests.nsid_of(self._own_ns_fd)


def _resync_delay(failures: int) -> float:
    """None after the first failure of a streak (an ENOBUFS burst), then 20 ms doubling up to 1 s."""
    return 0.0 if failures <= 1 else min(0.01 * 2 ** min(failures, 8), 1.0)


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    if code is not None and code in errno.errorcode:
        return f"{errno.errorcode[code]} ({exc})"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class DiscoveryStats:
    namespaces: int
    resyncs: int
    dropped: dict[str, int] = field(default_factory=dict)  # netlink datagrams not believed, by reason
    missing_uplinks: tuple[str, ...] = ()  # configured uplinks with no link of that name in the host


class EndpointSource(Protocol):
    """What the daemon needs from discovery (the seam where tests put a stand-in)."""

    synced: asyncio.Event  # set once every namespace present at start has been read

    def subscribe(self, on_change: Callable[[], None]) -> None: ...
    def by_namespace(self) -> Mapping[str, tuple[Endpoint, ...]]: ...
    def snapshot(self) -> tuple[Endpoint, ...]: ...
    def host_addresses(self) -> frozenset[IPAddress]: ...
    def namespace_ids(self) -> dict[str, tuple[int, int]]: ...
    def stats(self) -> DiscoveryStats: ...
    def reconfigure(self, uplinks: Iterable[str], netns_dirs: Iterable[Path], rescan_interval: float) -> None: ...
    async def run(self) -> None: ...
    async def close(self) -> None: ...


class Discovery:
    def __init__(self, uplinks: Iterable[str], netns_dirs: Iterable[Path], rescan_interval: float = 10.0,
                 *, host_netns: str | None = None, container_rcvbuf: int = CONTAINER_RCVBUF,
                 own_rcvbuf: int = OWN_RCVBUF) -> None:
        """``host_netns``: the namespace whose uplinks this agent serves (default: the one it runs in)."""
        self.uplinks = tuple(uplinks)
        self.netns_dirs = tuple(Path(d) for d in netns_dirs)
        self.rescan_interval = rescan_interval
        self._subscribers: list[Callable[[], None]] = []
        self.synced = asyncio.Event()  # own namespace and every namespace present at start dumped once
        self._container_rcvbuf = container_rcvbuf
        self._own_rcvbuf = own_rcvbuf
        self._opener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns-open")
        own_path = host_netns or "/proc/self/ns/net"
        self._own_ns_fd = os.open(own_path, os.O_RDONLY | os.O_CLOEXEC)
        self._own_identity = namespace_identity(own_path)
        self._own = NamespaceWatcher(host_netns, self._note_change, self._opener, own_rcvbuf, self._own_ns_fd)
        self._watchers: dict[tuple[int, int], tuple[NamespaceWatcher, asyncio.Task[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._dirs_changed = asyncio.Event()
        self._resyncs_of_gone = 0
        self._dropped_of_gone: Counter[str] = Counter()
        self._unmounted: dict[str, float] = {}  # namespace files not bind-mounted yet -> first seen
        self._junk: set[tuple[int, int]] = set()  # (device, inode) of entries that are not namespaces
        self._inotify: DirectoryEvents | None = None

    def by_namespace(self) -> dict[str, tuple[Endpoint, ...]]:
        """The endpoints of every namespace that has any, by namespace path (OWN_NAMESPACE first, then by
        path). A namespace's tuple is the same object from one call to the next while nothing in it changed,
        so a consumer re-derives only the namespaces whose tuple is new (``routes.DesiredIndex``)."""
        own_view = self._own.view
        if own_view is None:
            return {}
        uplinks = uplink_ifindexes(own_view.links.values(), self.uplinks)
        found: dict[str, tuple[Endpoint, ...]] = {}
        if own := self._own.endpoints(uplinks):
            found[OWN_NAMESPACE] = own
        for watcher in sorted((w for w, _ in self._watchers.values()), key=lambda w: w.path or ""):
            if endpoints := watcher.endpoints(uplinks):
                found[watcher.path or OWN_NAMESPACE] = endpoints
        return found

    def snapshot(self) -> tuple[Endpoint, ...]:
        """Every endpoint, ordered by Endpoint.key: the own namespace ("") first, then by path and ifindex."""
        return flatten(self.by_namespace())

    def ignored(self) -> list[tuple[str, Link, str]]:
        """(namespace, link, reason) of every link that is not an endpoint (see ``endpoints.ignored_in``)."""
        own_view = self._own.view
        if own_view is None:
            return []
        uplinks = uplink_ifindexes(own_view.links.values(), self.uplinks)
        found = [(OWN_NAMESPACE, link, why) for link, why in ignored_in(own_view, uplinks, own=True)]
        for path, view in sorted(self.views().items()):
            found.extend((path, link, why) for link, why in ignored_in(view, uplinks, own=False))
        return found

    def host_addresses(self) -> frozenset[IPAddress]:
        """Every address on an interface of the host's own namespace, except on ipvlan endpoints living there:
        never advertised from a container (address ownership)."""
        own_view = self._own.view
        if own_view is None:
            return frozenset()
        uplinks = uplink_ifindexes(own_view.links.values(), self.uplinks)
        endpoints = {e.ifindex for e in self._own.endpoints(uplinks)}
        return frozenset(a.ip for index, found in own_view.addresses.items() if index not in endpoints for a in found)

    def subscribe(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` whenever the snapshot may have changed (and once when discovery is synced)."""
        self._subscribers.append(on_change)

    def _note_change(self) -> None:
        for on_change in self._subscribers:
            on_change()

    def reconfigure(self, uplinks: Iterable[str], netns_dirs: Iterable[Path], rescan_interval: float) -> None:
        """New uplinks apply at the next snapshot; new directories at the next scan, which this triggers."""
        self.uplinks = tuple(uplinks)
        self.netns_dirs = tuple(Path(d) for d in netns_dirs)
        self.rescan_interval = rescan_interval
        if self._inotify is not None:
            self._inotify.set_directories(self.netns_dirs)
        self._dirs_changed.set()

    def views(self) -> dict[str, NamespaceView]:
        """The current view of every watched container namespace, by path (for diagnostics and tests)."""
        return {w.path: w.view for w, _ in self._watchers.values() if w.path is not None and w.view is not None}

    def namespace_ids(self) -> dict[str, tuple[int, int]]:
        """Path -> identity (device, inode) of every watched container namespace (matched to Docker's sandboxes)."""
        return {w.path: key for key, (w, _) in self._watchers.items() if w.path is not None}

    def stats(self) -> DiscoveryStats:
        watchers = [w for w, _ in self._watchers.values()]
        dropped = self._own.dropped + self._dropped_of_gone
        for w in watchers:
            dropped.update(w.dropped)
        return DiscoveryStats(
            namespaces=len(watchers) + 1,
            resyncs=self._own.resyncs + sum(w.resyncs for w in watchers) + self._resyncs_of_gone,
            dropped={reason: dropped[reason] for reason in DROP_REASONS},
            missing_uplinks=() if self._own.view is None else missing_uplinks(self._own.view.links.values(),
                                                                              self.uplinks),
        )

    async def run(self) -> None:
        """Run until cancelled."""
        self._tasks.append(asyncio.create_task(self._own.run(), name="netns-own"))
        self._rescan(None)
        await asyncio.gather(self._own.synced.wait(), *(w.synced.wait() for w, _ in self._watchers.values()))
        self.synced.set()
        self._note_change()
        inotify = self._inotify = DirectoryEvents(self.netns_dirs, self._dirs_changed)
        try:
            while True:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives just as
                # the event is set (an inotify event at shutdown), and the task then never ends.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_scan_in()):
                        await self._dirs_changed.wait()
                self._dirs_changed.clear()
                self._rescan(inotify)
        finally:
            inotify.close()
            await self.close()

    def _rescan(self, inotify: DirectoryEvents | None) -> None:
        try:
            if inotify is not None:
                inotify.refresh()
            self._scan()
        except Exception:  # one failed rescan must not end them all: the next one tries again
            log.exception("namespace rescan failed")

    async def close(self) -> None:
        tasks = self._tasks + [task for _, task in self._watchers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
        self._tasks.clear()
        self._opener.shutdown(wait=False)
        if self._own_ns_fd >= 0:  # close() runs twice (run's end, then the daemon's): never close a reused fd
            with contextlib.suppress(OSError):
                os.close(self._own_ns_fd)
            self._own_ns_fd = -1

    def _scan(self) -> None:
        present: dict[tuple[int, int], str] = {}
        seen: set[tuple[int, int]] = set()
        now = time.monotonic()
        for directory in self.netns_dirs:
            try:
                names = sorted(os.listdir(directory))
            except OSError as exc:  # missing, or not readable (PermissionError): the others still count
                if not isinstance(exc, FileNotFoundError):
                    log.warning("cannot list namespace directory %s: %s", directory, exc.strerror)
                continue
            for name in names:
                path = str(directory / name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                identity = (st.st_dev, st.st_ino)
                seen.add(identity)
                if identity == self._own_identity or identity in present or identity in self._junk:
                    continue
                if not stat.S_ISREG(st.st_mode) or not is_nsfs(path):
                    # `ip netns add` and Docker create an empty file, then bind-mount it: no inotify event
                    # follows the mount, so look again shortly (for a while). Anything else is junk: remembered
                    # by identity and skipped until it changes.
                    if stat.S_ISREG(st.st_mode) and st.st_size == 0 \
                            and now - self._unmounted.setdefault(path, now) < UNMOUNTED_PATIENCE:
                        continue
                    self._unmounted.pop(path, None)
                    self._junk.add(identity)
                    log.warning("ignoring %s: not a network namespace", printable(path),
                                extra={"path": printable(path)})
                    continue
                self._unmounted.pop(path, None)
                present[identity] = path
        self._junk &= seen
        self._unmounted = {p: t for p, t in self._unmounted.items() if os.path.lexists(p)}
        for identity in list(self._watchers):
            watcher, _ = self._watchers[identity]
            if identity not in present or watcher.gone:
                self._forget(identity)
        for identity, path in present.items():
            if identity not in self._watchers:
                watcher = NamespaceWatcher(path, self._note_change, self._opener, self._container_rcvbuf,
                                           self._own_ns_fd)
                task = asyncio.create_task(watcher.run(), name=f"netns {path}")
                self._watchers[identity] = (watcher, task)

    def _next_scan_in(self) -> float:
        now = time.monotonic()
        pending = any(now - t < UNMOUNTED_PATIENCE for t in self._unmounted.values())
        return UNMOUNTED_RETRY if pending else self.rescan_interval

    def _forget(self, identity: tuple[int, int]) -> None:
        watcher, task = self._watchers.pop(identity)
        self._resyncs_of_gone += watcher.resyncs
        self._dropped_of_gone.update(watcher.dropped)
        task.cancel()  # closes its socket, which also stops it from pinning a deleted namespace
        if watcher.view is not None:
            watcher.view = None
            self._note_change()
