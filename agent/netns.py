"""Network-namespace plumbing over libc (ctypes): sockets opened inside a namespace with setns(2), the
identity and nsfs check of a namespace file, and inotify on the directories that hold them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

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
    """A NETLINK_ROUTE socket living in the namespace at ``path`` (None: the caller's namespace)."""
    sock = socket_in(path, socket.AF_NETLINK, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN; SO_RCVBUF (capped by rmem_max) is the fallback
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
    return sock


def socket_in(path: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket living in the namespace at ``path`` (None: the caller's namespace).

    setns(2) switches only the calling thread, and it switches back before this returns.
    """
    if path is None:
        return socket.socket(family, kind, proto)
    try:  # never blocks (a FIFO), never follows a symlink; setns only into what is nsfs on this very fd
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise NamespaceGone(f"{path}: {exc.strerror}") from None
    if not is_nsfs(target):
        os.close(target)
        raise NamespaceGone(f"{path}: not a namespace file")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, path)
        try:
            return socket.socket(family, kind, proto)
        finally:
            _setns(home, "back to the agent's namespace")
    finally:
        os.close(target)
        os.close(home)


def namespace_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a namespace file: two bind mounts of one namespace share it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


_NSFS_MAGIC = 0x6E736673


def is_nsfs(path: str | int) -> bool:
    """Whether ``path`` (or the open file descriptor) is on nsfs, the namespace file system."""
    buf = ctypes.create_string_buffer(128)
    if (_libc.fstatfs(path, buf) if isinstance(path, int) else _libc.statfs(path.encode(), buf)) != 0:
        return False
    return bool(struct.unpack_from("l", buf.raw)[0] == _NSFS_MAGIC)


_IN_CREATE, _IN_DELETE, _IN_MOVED_FROM, _IN_MOVED_TO, _IN_ATTRIB = 0x100, 0x200, 0x40, 0x80, 0x4
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000


class DirectoryEvents:
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
            if directory not in self._watched \
                    and _libc.inotify_add_watch(self._fd, str(directory).encode(), mask) >= 0:
                self._watched.add(directory)  # fails (ENOENT, EACCES, ENOTDIR) until it is a usable directory

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
