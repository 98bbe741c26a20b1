"""Why the daemon's loop wakes up. Anyone may ``post`` a reason; the loop takes them all at once, so a
burst of changes costs one pass."""

from __future__ import annotations

import asyncio
import contextlib
import time
from enum import Enum


class Reason(Enum):
    CHANGE = "change"  # discovery's snapshot may differ
    GOBGP = "gobgp"  # gobgpd came (back) or went: what it holds is unknown
    RETRY = "retry"  # a failed pass, again
    RELEASE = "release"  # a held-down endpoint's hold-down ends
    RELOAD = "reload"  # a new configuration
    RIB_CHECK = "rib_check"  # compare gobgpd's path counts with ours
    FULL_READ = "full_read"  # re-read gobgpd's whole table
    PEERS = "peers"  # a BGP peer changed: look for neighbors gobgpd holds back for us (agent/peers.py)
    STOP = "stop"


class Wakeups:
    def __init__(self) -> None:
        self._reasons: set[Reason] = set()
        self._posted = asyncio.Event()
        self._timers: dict[Reason, asyncio.TimerHandle] = {}
        self.first_change_at: float | None = None  # monotonic; the first CHANGE not yet taken

    def post(self, reason: Reason) -> None:
        if reason is Reason.CHANGE and self.first_change_at is None:
            self.first_change_at = time.monotonic()
        self._reasons.add(reason)
        self._posted.set()

    def post_in(self, delay: float, reason: Reason) -> None:
        """One pending timer per reason: a new one replaces the old."""
        if (old := self._timers.pop(reason, None)) is not None:
            old.cancel()
        self._timers[reason] = asyncio.get_running_loop().call_later(delay, self.post, reason)

    async def wait(self, timeout: float) -> bool:
        """Until something is posted (True) or ``timeout`` passes (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._posted.wait(), timeout)
        return self._posted.is_set()

    def take(self) -> tuple[set[Reason], float | None]:
        """Every reason posted since the last take, and when the first change among them happened."""
        reasons, first_change_at = self._reasons, self.first_change_at
        self._reasons, self.first_change_at = set(), None
        self._posted.clear()
        return reasons, first_change_at

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
