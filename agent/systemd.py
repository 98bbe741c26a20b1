"""The systemd notify protocol (Type=notify, WatchdogSec), spoken directly: no libsystemd needed."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)
_warned = False


def notify(message: str) -> bool:
    """Send e.g. ``READY=1`` to systemd; False when not running under it (no NOTIFY_SOCKET) or when the
    socket is unusable. Never raises: the agent's routes matter more than telling systemd about them."""
    global _warned
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        # non-blocking: a receiver that does not read must never stall the event loop
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        if not _warned:
            _warned = True
            log.warning("cannot notify systemd at NOTIFY_SOCKET=%r: %s (warned once)", address, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when the watchdog is off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2
