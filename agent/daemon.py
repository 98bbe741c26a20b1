"""The agent's main loop: wake-ups (netlink, timers, gobgpd events) -> snapshot -> reconcile.

Level-triggered: every pass re-reads the whole endpoint snapshot, so event order never matters. The
first change after a quiet period is handled at once; changes that arrive during a pass, or within the
settle window after it, coalesce into the next one (a burst costs a pass per window, not per event).
The first pass waits for the complete initial dump of every namespace, so a restarting agent never
mistakes "not looked yet" for "gone" and withdraws live paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from .config import AgentConfig, ConfigError, OnShutdown, load_config
from .dampening import FlapDamper
from .discovery import Discovery
from .endpoints import Endpoint
from .gobgp import GobgpClient, GobgpError, GobgpEventKind
from .logs import setup_logging
from .metrics import Metrics
from .reconciler import Reconciler
from .status import StatusServer
from .systemd import notify, watchdog_interval

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
        self.metrics = Metrics()
        self.status_server = StatusServer(self, config.status.socket)
        self.last_endpoints: tuple[Endpoint, ...] = ()
        self.held_down: tuple[Endpoint, ...] = ()
        self.gobgp_reachable = False
        self.gobgp_restarts = 0
        self.healthy = False
        self._on_ready = on_ready
        self._stop = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._watchdog_due = False
        self._rib_check_due = False
        self._pass_requested = False  # by a reload, a retry or a hold-down release
        self._last_pass_ended = float("-inf")

    @property
    def wake(self) -> asyncio.Event:
        return self.discovery.changed

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def _request_pass(self) -> None:
        self._pass_requested = True
        self.wake.set()

    def _pass_in(self, delay: float, purpose: str) -> None:
        """One pending pass per purpose (retry, hold-down release): a new one replaces the old."""
        if (old := self._timers.pop(purpose, None)) is not None:
            old.cancel()
        self._timers[purpose] = asyncio.get_running_loop().call_later(delay, self._request_pass)

    def _pass_needed(self) -> bool:
        """False when nothing changed on either side since the last good pass, so its plan would be empty
        (at 10,000 endpoints a pass is ~0.35 s of CPU, and the periodic checks would otherwise pay it)."""
        return (self._pass_requested or not self.healthy or self.reconciler.actual is None
                or self.discovery.first_change_at is not None)

    def reload(self, config: AgentConfig) -> None:
        """Take a new, already validated config; the next pass re-sends only prefixes whose routes changed."""
        if config.gobgp != self.config.gobgp or config.status != self.config.status \
                or config.metrics != self.config.metrics:
            log.warning("reload: [gobgp], [status] and [metrics] changes take effect at the next restart")
            config = config.model_copy(update={"gobgp": self.config.gobgp, "status": self.config.status,
                                               "metrics": self.config.metrics})
        self.config = config
        self.reconciler.config = config
        self.damper.config = config.dampening
        self.discovery.reconfigure(config.uplinks, config.netns_dirs)
        setup_logging(config.log.level, config.log.format)
        log.info("configuration reloaded")
        self._request_pass()

    async def run(self) -> None:
        if self.config.metrics.listen:
            try:
                await self.metrics.serve(self.config.metrics.listen)
            except OSError as exc:  # routes matter more than metrics: keep going, loudly
                log.error("metrics: cannot listen on %s: %s", self.config.metrics.listen, exc)
        await self.status_server.start()
        tasks = [
            asyncio.create_task(self.discovery.run(), name="discovery"),
            asyncio.create_task(self._watch_gobgp(), name="gobgp-watch"),
            asyncio.create_task(self._drift_timer(), name="drift-checks"),
        ]
        interval = watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(self._watchdog_timer(interval), name="watchdog"))
        try:
            await self._main_loop()
        finally:
            notify("STOPPING=1")
            for timer in self._timers.values():
                timer.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.status_server.close()
            self.metrics.close()
            await self._shutdown()

    async def _watchdog_timer(self, interval: float) -> None:
        """Wake the loop regularly; the loop itself pings systemd, so a wedged loop stops the pings."""
        while True:
            await asyncio.sleep(interval)
            self._watchdog_due = True
            self.wake.set()

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
            quiet_for = time.monotonic() - self._last_pass_ended
            if quiet_for < self.config.timers.settle:
                await asyncio.sleep(self.config.timers.settle - quiet_for)
            self.wake.clear()
            if self._rib_check_due:
                self._rib_check_due = False
                await self._check_rib()
            if not self._pass_needed():
                self._ping_watchdog()
                continue
            self._pass_requested = False
            first_event_at = self.discovery.first_change_at
            self.discovery.first_change_at = None
            ok = await self._pass()
            self._last_pass_ended = time.monotonic()
            self._ping_watchdog()
            if not ok:
                self._pass_in(retry, "retry")
                retry = min(retry * 2, RETRY_MAX)
                continue
            if first_event_at is not None:
                self.metrics.latency.observe(time.monotonic() - first_event_at)
            retry = RETRY_FIRST
            if not self.healthy:
                self.healthy = True
                log.info("in sync with gobgpd: %d path(s)", len(self.reconciler.actual or {}))
                notify(f"READY=1\nSTATUS=in sync: {len(self.reconciler.actual or {})} path(s)")
                if self._on_ready is not None:
                    self._on_ready()
                    self._on_ready = None

    def _ping_watchdog(self) -> None:
        if self._watchdog_due:
            self._watchdog_due = False
            notify("WATCHDOG=1")

    async def _check_rib(self) -> None:
        try:
            moved = await self.reconciler.table_moved()
        except GobgpError as exc:
            log.warning("rib check: %s", exc)
            moved = True
        if moved and self.reconciler.actual is not None:
            log.debug("gobgpd's path counts moved without us: re-reading its table")
            self.reconciler.invalidate()

    async def _pass(self) -> bool:
        endpoints = self.discovery.snapshot()
        damped = self.damper.filter(endpoints, time.monotonic())
        if damped.next_release is not None:
            self._pass_in(max(damped.next_release - time.monotonic(), 0.0) + 0.001, "release")
        for endpoint in set(damped.held) - set(self.held_down):
            log.warning("holding down flapping endpoint %s", endpoint.label)
        self.last_endpoints, self.held_down = endpoints, damped.held
        m = self.metrics
        m.observe_endpoints(endpoints)
        m.held.set(len(damped.held))
        stats = self.discovery.stats()
        m.namespaces.set(stats.namespaces)
        m.resyncs.set(stats.resyncs)
        refused_before = dict(self.reconciler.stats.refused)
        started = time.perf_counter()
        try:
            self.reconciler.host_addresses = self.discovery.host_addresses()
            plan = await self.reconciler.reconcile(damped.endpoints)
        except GobgpError as exc:
            self.healthy = False
            m.passes.labels(result="error").inc()
            m.errors.labels(kind=type(exc).__name__).inc()
            log.warning("reconcile failed: %s", exc)
            return False
        m.pass_seconds.observe(time.perf_counter() - started)
        m.passes.labels(result="ok").inc()
        m.paths_sent.labels(op="add").inc(len(plan.add))
        m.paths_sent.labels(op="withdraw").inc(len(plan.withdraw))
        m.observe_prefixes(self.reconciler.actual or {})
        stats_now = self.reconciler.stats
        m.observe_refusals(refused_before, stats_now.refused)
        m.observe_netlink_drops(stats.dropped)
        return True

    async def _watch_gobgp(self) -> None:
        seen_ready = False
        async for event in self.client.watch():
            if event.kind is GobgpEventKind.READY:
                self.gobgp_reachable = True
                self.metrics.gobgp_up.set(1)
                if seen_ready:
                    self.gobgp_restarts += 1
                    self.metrics.gobgp_restarts.inc()
                    log.warning("gobgpd is back; re-pushing every path")
                seen_ready = True
                self.reconciler.invalidate()
                self.wake.set()
            elif event.kind is GobgpEventKind.LOST:
                self.gobgp_reachable = False
                self.metrics.gobgp_up.set(0)
                self.healthy = False
                self.reconciler.invalidate()  # it may come back empty; until a pass has read it, we don't know
                log.warning("lost gobgpd: %s", event.detail)
            else:
                log.info("BGP peer %s", event.detail)

    async def _drift_timer(self) -> None:
        """Repairs drift that no event announces (a path of ours deleted behind our back): every
        ``full_reconcile`` the next pass re-reads gobgpd's whole table; between, every ``rib_check``, the
        loop compares gobgpd's path counts with what it expects and re-reads at once if they moved
        (listing 10,000 paths costs seconds of CPU; counting them, two small RPCs)."""
        last_full = time.monotonic()
        while True:
            timers = self.config.timers
            await asyncio.sleep(min(timers.rib_check, timers.full_reconcile))
            if time.monotonic() - last_full >= timers.full_reconcile:
                last_full = time.monotonic()
                self.reconciler.invalidate()
            else:
                self._rib_check_due = True
            self.wake.set()

    async def _shutdown(self) -> None:
        try:
            if self.config.on_shutdown is OnShutdown.WITHDRAW:
                try:  # each RPC has its own deadline; a whole table may take longer than one
                    count = await self.reconciler.withdraw_all()
                    log.info("withdrew all %d owned path(s) on shutdown", count)
                except GobgpError as exc:
                    log.error("could not withdraw owned paths on shutdown: %s", exc)
            else:
                log.info("leaving %d path(s) in gobgpd (on_shutdown = retain)", len(self.reconciler.actual or {}))
        finally:
            await self.discovery.close()
            await self.client.close()


@contextlib.asynccontextmanager
async def running(config: AgentConfig, ready_timeout: float = 60.0) -> AsyncIterator[Daemon]:
    """A Daemon running as a task of the current loop, in sync with gobgpd; stopped on exit."""
    ready = asyncio.Event()
    daemon = Daemon(config, on_ready=ready.set)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(ready.wait(), ready_timeout)
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 60)


def _raise_nofile_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one netlink socket per namespace


async def run_daemon(config: AgentConfig, config_path: Path | None = None,
                     on_ready: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT (a second one exits at once); SIGHUP reloads ``config_path``."""
    _raise_nofile_limit()
    daemon = Daemon(config, on_ready=on_ready)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_hup() -> None:
        if config_path is None:
            return
        notify("RELOADING=1")
        try:
            daemon.reload(load_config(config_path))
        except ConfigError as exc:
            log.error("reload refused, still running on the previous configuration: %s", exc)
        finally:
            notify("READY=1")

    loop.add_signal_handler(signal.SIGHUP, on_hup)

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
        for sig in (*signals, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
