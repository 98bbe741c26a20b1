"""Endpoint discovery: netlink in the agent's own namespace and in every container namespace.

Namespaces are found in the configured directories (inotify for speed, a periodic rescan as a safety
net). Each namespace gets two netlink sockets (events and requests, see agent.rtnl), opened inside it
with setns(2) on a helper thread (no fork: the process also runs gRPC); the first is subscribed to link
and address events, then the namespace is dumped through the second. On any netlink
error - ENOBUFS after an event burst included - the namespace is dumped again from scratch, so the view
is never stale. ``snapshot()`` returns the complete, immutable set of endpoints; ``changed`` is set
whenever it may differ from the last one (consumers clear it; bursts coalesce).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .endpoints import OWN_NAMESPACE, Endpoint, Link, NamespaceView, endpoints_in, uplink_ifindexes
from .rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK, Dump, RtnlSocket, changes

log = logging.getLogger(__name__)

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
OWN_RCVBUF = 8 * 1024 * 1024
CONTAINER_RCVBUF = 4 * 1024 * 1024  # ~4,000 queued events (an skb costs ~1 KiB): seconds of a 1,000/s storm
DUMP_ATTEMPTS = 5
UNMOUNTED_RETRY = 0.02  # seconds between looks at a namespace file that is not mounted yet
UNMOUNTED_PATIENCE = 5.0  # after this, an unmounted file waits for the regular rescan
_CLONE_NEWNET = 0x40000000
_SO_RCVBUFFORCE = 33
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceGone(Exception):
    """The namespace file no longer names a network namespace (deleted, or not mounted yet)."""


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceGone(f"setns {what}: {os.strerror(err)}")


def open_netlink_in(path: str | None, rcvbuf: int) -> socket.socket:
    """A NETLINK_ROUTE socket living in the namespace at ``path`` (None: the caller's namespace).

    Runs on a dedicated thread: setns(2) switches only the calling thread, which then switches back.
    """
    if path is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    else:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NamespaceGone(f"{path}: {exc.strerror}") from None
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, path)
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
            finally:
                _setns(home, "back to the agent's namespace")
        finally:
            os.close(target)
            os.close(home)
    with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN; SO_RCVBUF (capped by rmem_max) is the fallback
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
    return sock


def _close_result(future: asyncio.Future[socket.socket]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def namespace_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a namespace file: two bind mounts of one namespace share it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _unsigned_nsid(value: int | None) -> int | None:
    return None if value is None or value < 0 or value >= 2**31 else value


class NamespaceWatcher:
    """Keeps the NamespaceView of one namespace true: dump, then events; re-dump after any error."""

    def __init__(self, path: str | None, on_change: Callable[[], None], opener: ThreadPoolExecutor, rcvbuf: int,
                 own_ns_fd: int) -> None:
        self.path = path
        self.view: NamespaceView | None = None  # None until the first dump completes
        self.resyncs = 0
        self.interrupted_dumps = 0  # tables taken as the union of interrupted dumps (none was clean)
        self.synced = asyncio.Event()
        self.gone = False
        self._on_change = on_change
        self._opener = opener
        self._rcvbuf = rcvbuf
        self._own_ns_fd = own_ns_fd
        self._derived: tuple[NamespaceView, int, int | None, dict[int, str], tuple[Endpoint, ...]] | None = None

    def endpoints(self, uplinks: dict[int, str]) -> tuple[Endpoint, ...]:
        """The endpoints of this namespace, re-derived only when its view or the uplinks changed."""
        view = self.view
        if view is None:
            return ()
        derived = self._derived
        if derived is not None and derived[0] is view and derived[1] == view.version \
                and derived[2] == view.own_nsid and derived[3] == uplinks:
            return derived[4]
        found = tuple(endpoints_in(self.path or OWN_NAMESPACE, view, uplinks, own=self.path is None))
        self._derived = (view, view.version, view.own_nsid, uplinks, found)
        return found

    @property
    def label(self) -> str:
        return self.path or "(own namespace)"

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
                failures += 1
                if self.path is not None and not _is_nsfs(self.path):
                    self._drop(gone=True)
                    return
                log.warning("netlink resync in %s after %s", self.label, _describe(exc))
                await asyncio.sleep(min(0.01 * 2**failures, 1.0) if failures > 1 else 0)
            else:
                failures = 0

    def _drop(self, gone: bool) -> None:
        self.gone = gone
        if self.view is not None:
            self.view = None
            self._on_change()
        self.synced.set()

    async def _session(self) -> None:
        # Two sockets: the event socket never sends, so every message on it is an event; replies to our
        # requests arrive on the other one.
        events = RtnlSocket(await self._open(self._rcvbuf))
        requests: RtnlSocket | None = None
        try:
            events.subscribe(GROUPS)  # before the dump, so no change falls in between
            requests = RtnlSocket(await self._open(1 << 20))
            view = NamespaceView()
            for dump in (requests.dump_links, requests.dump_addresses):
                await self._dump_into(view, dump)
            view.own_nsid = await self._own_nsid(requests)
            self.view = view
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


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    if code is not None and code in errno.errorcode:
        return f"{errno.errorcode[code]} ({exc})"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class DiscoveryStats:
    namespaces: int
    resyncs: int


class Discovery:
    def __init__(self, uplinks: Iterable[str], netns_dirs: Iterable[Path], rescan_interval: float = 10.0,
                 *, host_netns: str | None = None, container_rcvbuf: int = CONTAINER_RCVBUF,
                 own_rcvbuf: int = OWN_RCVBUF) -> None:
        """``host_netns``: the namespace whose uplinks this agent serves (default: the one it runs in)."""
        self.uplinks = tuple(uplinks)
        self.netns_dirs = tuple(Path(d) for d in netns_dirs)
        self.rescan_interval = rescan_interval
        self.changed = asyncio.Event()
        self.first_change_at: float | None = None  # monotonic time of the first change since a consumer reset it
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
        self._unmounted: dict[str, float] = {}  # namespace files not bind-mounted yet -> first seen
        self._inotify: _DirectoryEvents | None = None

    def snapshot(self) -> tuple[Endpoint, ...]:
        own_view = self._own.view
        if own_view is None:
            return ()
        uplinks = uplink_ifindexes(own_view.links.values(), self.uplinks)
        found = list(self._own.endpoints(uplinks))
        for watcher in sorted((w for w, _ in self._watchers.values()), key=lambda w: w.path or ""):
            found.extend(watcher.endpoints(uplinks))
        return tuple(found)  # ordered by Endpoint.key: the own namespace ("") first, then by path and ifindex

    def _note_change(self) -> None:
        if self.first_change_at is None:
            self.first_change_at = time.monotonic()
        self.changed.set()

    def reconfigure(self, uplinks: Iterable[str], netns_dirs: Iterable[Path]) -> None:
        """New uplinks apply at the next snapshot; new directories at the next scan, which this triggers."""
        self.uplinks = tuple(uplinks)
        self.netns_dirs = tuple(Path(d) for d in netns_dirs)
        if self._inotify is not None:
            self._inotify.set_directories(self.netns_dirs)
        self._dirs_changed.set()

    def views(self) -> dict[str, NamespaceView]:
        """The current view of every watched container namespace, by path (for diagnostics and tests)."""
        return {w.path: w.view for w, _ in self._watchers.values() if w.path is not None and w.view is not None}

    def stats(self) -> DiscoveryStats:
        watchers = [w for w, _ in self._watchers.values()]
        return DiscoveryStats(
            namespaces=len(watchers) + 1,
            resyncs=self._own.resyncs + sum(w.resyncs for w in watchers) + self._resyncs_of_gone,
        )

    async def run(self) -> None:
        """Run until cancelled."""
        self._tasks.append(asyncio.create_task(self._own.run(), name="netns-own"))
        self._scan()
        await asyncio.gather(self._own.synced.wait(), *(w.synced.wait() for w, _ in self._watchers.values()))
        self.synced.set()
        self.changed.set()
        inotify = self._inotify = _DirectoryEvents(self.netns_dirs, self._dirs_changed)
        try:
            while True:
                # asyncio.timeout, not wait_for: on 3.11 a cancel that lands while wait_for's timeout fires
                # comes out as TimeoutError, and this loop (and the caller's cancel-and-wait) never ends
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_scan_in()):
                        await self._dirs_changed.wait()
                self._dirs_changed.clear()
                inotify.refresh()
                self._scan()
        finally:
            inotify.close()
            await self.close()

    async def close(self) -> None:
        tasks = self._tasks + [task for _, task in self._watchers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
        self._tasks.clear()
        self._opener.shutdown(wait=False)
        with contextlib.suppress(OSError):
            os.close(self._own_ns_fd)

    def _scan(self) -> None:
        present: dict[tuple[int, int], str] = {}
        for directory in self.netns_dirs:
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                path = str(directory / name)
                identity = namespace_identity(path)
                if identity is None or identity == self._own_identity or identity in present:
                    continue
                if not _is_nsfs(path):
                    # `ip netns add` and Docker create the file, then bind-mount it: no inotify event
                    # follows the mount, so look again shortly.
                    self._unmounted.setdefault(path, time.monotonic())
                    continue
                self._unmounted.pop(path, None)
                present[identity] = path
        for identity in list(self._watchers):
            watcher, task = self._watchers[identity]
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
        self._unmounted = {p: t for p, t in self._unmounted.items() if now - t < UNMOUNTED_PATIENCE}
        return UNMOUNTED_RETRY if self._unmounted else self.rescan_interval

    def _forget(self, identity: tuple[int, int]) -> None:
        watcher, task = self._watchers.pop(identity)
        self._resyncs_of_gone += watcher.resyncs
        task.cancel()  # closes its socket, which also stops it from pinning a deleted namespace
        if watcher.view is not None:
            watcher.view = None
            self._note_change()


_NSFS_MAGIC = 0x6E736673


def _is_nsfs(path: str) -> bool:
    buf = ctypes.create_string_buffer(128)
    if _libc.statfs(path.encode(), buf) != 0:
        return False
    return bool(struct.unpack_from("l", buf.raw)[0] == _NSFS_MAGIC)


_IN_CREATE, _IN_DELETE, _IN_MOVED_FROM, _IN_MOVED_TO, _IN_ATTRIB = 0x100, 0x200, 0x40, 0x80, 0x4
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000


class _DirectoryEvents:
    """inotify on the namespace directories; any event just asks for a rescan. Missing directories
    are watched once they exist (checked on every refresh)."""

    def __init__(self, directories: Iterable[Path], wake: asyncio.Event) -> None:
        self._fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        self._dirs = tuple(directories)
        self._watched: set[Path] = set()
        self._wake = wake
        if self._fd >= 0:
            asyncio.get_running_loop().add_reader(self._fd, self._read)
        self.refresh()

    def set_directories(self, directories: Iterable[Path]) -> None:
        self._dirs = tuple(directories)
        self.refresh()

    def refresh(self) -> None:
        if self._fd < 0:
            return
        mask = _IN_CREATE | _IN_DELETE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_ATTRIB
        for directory in self._dirs:
            if directory not in self._watched and directory.is_dir() \
                    and _libc.inotify_add_watch(self._fd, str(directory).encode(), mask) >= 0:
                self._watched.add(directory)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):
                pass
        self._wake.set()

    def close(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
