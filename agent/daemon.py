"""The agent's main loop: wake-ups (netlink, timers, gobgpd events) -> snapshot -> reconcile.

Level-triggered: every pass re-reads the whole endpoint snapshot, so event order never matters and a
burst of events coalesces into one pass after a short settle window. The first pass waits for the
complete initial dump of every namespace, so a restarting agent never mistakes "not looked yet" for
"gone" and withdraws live paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from .config import AgentConfig, OnShutdown
from .dampening import FlapDamper
from .discovery import Discovery
from .gobgp import GobgpClient, GobgpError, GobgpEventKind
from .reconciler import Reconciler

log = logging.getLogger(__name__)

RETRY_FIRST = 0.2
RETRY_MAX = 5.0


class Daemon:
    def __init__(self, config: AgentConfig, *, on_ready: Callable[[], None] | None = None) -> None:
        self.config = config
        self.discovery = Discovery(config.uplinks, config.netns_dirs, config.timers.netns_rescan)
        self.client = GobgpClient(
            config.gobgp.target,
            config.ownership_community,
            tls_ca_file=config.gobgp.tls_ca_file,
            tls_server_name=config.gobgp.tls_server_name,
            rpc_timeout=config.gobgp.rpc_timeout,
        )
        self.reconciler = Reconciler(self.client, config)
        self.damper = FlapDamper(config.dampening)
        self.gobgp_reachable = False
        self.gobgp_restarts = 0
        self.healthy = False
        self._on_ready = on_ready
        self._stop = asyncio.Event()
        self._timers: list[asyncio.TimerHandle] = []

    @property
    def wake(self) -> asyncio.Event:
        return self.discovery.changed

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def _wake_in(self, delay: float) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay, self.wake.set))

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self.discovery.run(), name="discovery"),
            asyncio.create_task(self._watch_gobgp(), name="gobgp-watch"),
            asyncio.create_task(self._full_reconcile_timer(), name="full-reconcile"),
        ]
        try:
            await self._main_loop()
        finally:
            for timer in self._timers:
                timer.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._shutdown()

    async def _main_loop(self) -> None:
        synced = asyncio.create_task(self.discovery.synced.wait())
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait([synced, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        synced.cancel()
        log.info("discovery synced: %d namespace(s)", self.discovery.stats().namespaces)
        retry = RETRY_FIRST
        while not self._stop.is_set():
            await self.wake.wait()
            if self._stop.is_set():
                break
            if self.config.timers.settle:
                await asyncio.sleep(self.config.timers.settle)
            self.wake.clear()
            damped = self.damper.filter(self.discovery.snapshot(), time.monotonic())
            if damped.next_release is not None:
                self._wake_in(max(damped.next_release - time.monotonic(), 0.0) + 0.001)
            for endpoint in damped.held:
                log.warning("holding down flapping endpoint %s", endpoint.label)
            try:
                await self.reconciler.reconcile(damped.endpoints)
            except GobgpError as exc:
                self.healthy = False
                log.warning("reconcile failed, retrying in %.1f s: %s", retry, exc)
                self._wake_in(retry)
                retry = min(retry * 2, RETRY_MAX)
                continue
            retry = RETRY_FIRST
            if not self.healthy:
                self.healthy = True
                log.info("in sync with gobgpd: %d path(s)", len(self.reconciler.actual or {}))
                if self._on_ready is not None:
                    self._on_ready()
                    self._on_ready = None

    async def _watch_gobgp(self) -> None:
        seen_ready = False
        async for event in self.client.watch():
            if event.kind is GobgpEventKind.READY:
                self.gobgp_reachable = True
                if seen_ready:
                    self.gobgp_restarts += 1
                    log.warning("gobgpd is back; re-pushing every path")
                seen_ready = True
                self.reconciler.invalidate()
                self.wake.set()
            elif event.kind is GobgpEventKind.LOST:
                self.gobgp_reachable = False
                self.healthy = False
                log.warning("lost gobgpd: %s", event.detail)
            else:
                log.info("BGP peer %s", event.detail)

    async def _full_reconcile_timer(self) -> None:
        while True:
            await asyncio.sleep(self.config.timers.full_reconcile)
            self.reconciler.invalidate()
            self.wake.set()

    async def _shutdown(self) -> None:
        try:
            if self.config.on_shutdown is OnShutdown.WITHDRAW:
                try:
                    count = await asyncio.wait_for(self.reconciler.withdraw_all(), self.config.gobgp.rpc_timeout)
                    log.info("withdrew all %d owned path(s) on shutdown", count)
                except (GobgpError, TimeoutError) as exc:
                    log.error("could not withdraw owned paths on shutdown: %s", exc)
            else:
                log.info("leaving %d path(s) in gobgpd (on_shutdown = retain)", len(self.reconciler.actual or {}))
        finally:
            await self.discovery.close()
            await self.client.close()


def _raise_nofile_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one netlink socket per namespace


async def run_daemon(config: AgentConfig, on_ready: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT; a second signal exits at once."""
    _raise_nofile_limit()
    daemon = Daemon(config, on_ready=on_ready)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(signum: int) -> None:
        if daemon._stop.is_set():
            log.error("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: shutting down", signal.Signals(signum).name)
        daemon.stop()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await daemon.run()
    finally:
        for sig in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
