"""The agent's main loop: wake-ups (netlink, timers, gobgpd events) -> snapshot -> reconcile.

Level-triggered: every pass re-reads the whole endpoint snapshot, so event order never matters. The
first change after a quiet period is handled at once; changes that arrive during a pass, or within the
settle window after it, coalesce into the next one (a burst costs a pass per window, not per event).
The first pass waits for the complete initial dump of every namespace, so a restarting agent never
mistakes "not looked yet" for "gone" and withdraws live paths.

Supervised: the side tasks (gobgpd watch, drift timer, watchdog) restart with backoff when they end;
discovery cannot restart in place, so its end makes the agent unhealthy and ``run`` raise AgentFailed
(exit 1: systemd starts a fresh agent). A pass never ends the loop, whatever it raises. The watchdog
is fed while the loop's heartbeat is fresh, which it keeps during a long pass as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from . import wiring
from .config import AgentConfig, ConfigError, OnShutdown, load_config
from .dampening import FlapDamper
from .discovery import DiscoveryStats, EndpointSource
from .docker_ownership import DockerOwnership
from .drain import Drain, load_drain, save_drain
from .endpoints import Endpoint, flatten
from .gobgp import BgpSpeaker, GobgpError, GobgpEventKind
from .logs import setup_logging
from .metrics import Metrics, error_kind
from .model import IPNetwork
from .pacing import NamespacePacer
from .peers import release_held_peers
from .reconciler import Reconciler
from .routes import Plan, Refusal, group_by_namespace
from .state import AgentState, PassResult
from .status import StatusServer
from .systemd import notify, watchdog_interval
from .wakeups import Reason, Wakeups

log = logging.getLogger(__name__)

RETRY_FIRST = 0.2
RETRY_MAX = 5.0
TASK_RESTART_FIRST = 0.5
TASK_RESTART_MAX = 30.0
TASK_HEALTHY_AFTER = 60.0  # a task that ran this long before ending starts its backoff afresh
HEARTBEAT = 1.0  # the loop answers at least this often, idle or inside a pass
EARLY_PUSH_EVERY = 0.05  # seconds between adds-only pushes while discovery reads the namespaces present at start
PEER_REFRESH_TIMEOUT = 5.0  # for the ListPeer behind the per-peer metrics


T = TypeVar("T")


class AgentFailed(Exception):
    """A part of the agent ended and cannot be restarted in place: exit non-zero, systemd restarts us."""


class Backoff:
    def __init__(self, first: float, maximum: float) -> None:
        self.first, self.maximum, self._next = first, maximum, first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.first


# Wake-up reasons that always take a pass; the others (drift checks) only when gobgpd's table moved.
WANTING_A_PASS = frozenset({Reason.CHANGE, Reason.GOBGP, Reason.RETRY, Reason.RELEASE, Reason.RELOAD,
                            Reason.DRAIN})

# Changes that take a restart to apply; a reload that changes one of them is refused whole.
RESTART_ONLY = ("gobgp", "status", "metrics", "ownership_community")


class Daemon:
    def __init__(self, config: AgentConfig, *, speaker: BgpSpeaker | None = None,
                 discovery: EndpointSource | None = None, on_ready: Callable[[], None] | None = None) -> None:
        self.config = config
        self.discovery = discovery if discovery is not None else wiring.discovery(config)
        self.speaker = speaker if speaker is not None else wiring.gobgp_client(config)
        self.reconciler = Reconciler(self.speaker, config)
        self.damper = FlapDamper(config.dampening)
        self.pacer = NamespacePacer(config.timers.namespace_interval)
        self.metrics = Metrics()
        self.wakeups = Wakeups()
        self.discovery.subscribe(lambda: self.wakeups.post(Reason.CHANGE))
        self._read_more = asyncio.Event()  # discovery read something before it was synced
        self.discovery.subscribe(self._read_more.set)
        self.state = AgentState(gobgp_target=config.gobgp.target)
        self.status_server = StatusServer(lambda: self.state, self.speaker.list_peers, config.status.socket,
                                          {"drain": lambda: self.set_drained(True),
                                           "undrain": lambda: self.set_drained(False)})
        self.drain = load_drain(config.drain.state_file, config.drain.withdraw_after)
        if self.drain.drained:
            log.warning("this host is drained (since %s, kept in %s): every path carries GRACEFUL_SHUTDOWN until "
                        "`ipvlan-bgp undrain`", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.drain.since)),
                        config.drain.state_file)
        self._apply_drain()
        self.docker = DockerOwnership(config, lambda: self.wakeups.post(Reason.CHANGE)) \
            if config.docker.enabled else None
        self.failure: str | None = None  # why the agent gave up (exits non-zero)
        self._held_down: tuple[Endpoint, ...] = ()
        self._on_ready = on_ready
        self._stopping = False
        self._in_sync = False
        self._ready = False  # READY=1 sent (after the first good pass)
        self._release_due = False  # look for gobgpd neighbors held back for us once in sync (agent/peers.py)
        self._last_pass_ended = float("-inf")
        self._heartbeat = time.monotonic()
        self._timers_reloaded = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def healthy(self) -> bool:
        return self.state.healthy

    def stop(self) -> None:
        self._stopping = True
        self.wakeups.post(Reason.STOP)

    def _publish(self, **changes: Any) -> None:
        """Replace the published state (status readers only ever see a whole, consistent one)."""
        self.state = dataclasses.replace(self.state, **changes)
        self.metrics.healthy.set(1 if self.state.healthy else 0)

    def _set_health(self, healthy: bool, reason: str = "") -> None:
        if healthy == self.state.healthy and (healthy or reason == self.state.unhealthy_reason):
            return
        self._publish(healthy=healthy, unhealthy_reason=reason)
        notify("STATUS=" + (f"in sync: {len(self.reconciler.actual or {})} path(s)" if healthy
                            else f"NOT HEALTHY: {reason}"))

    def set_drained(self, drained: bool) -> dict[str, object]:
        """``ipvlan-bgp drain`` / ``undrain`` (RFC 8326, agent/drain.py); returns the drain's state."""
        persisted = True
        if drained != self.drain.drained:
            self.drain = Drain(time.time() if drained else None, self.config.drain.withdraw_after)
            try:
                save_drain(self.config.drain.state_file, self.drain)
            except OSError as exc:
                persisted = False
                log.error("drain state %s not saved (%s): a restart of the agent would forget it",
                          self.config.drain.state_file, exc)
            if drained:
                log.warning("drained: re-announcing every path with GRACEFUL_SHUTDOWN 65535:0%s",
                            f", withdrawing them in {self.drain.withdraw_after:g} s" if self.drain.withdraw_after
                            else "")
            else:
                log.warning("undrained: every path back as configured")
            self._apply_drain()
            self.wakeups.post(Reason.DRAIN)
        return {**self.drain.as_json(), "persisted": persisted}

    def _apply_drain(self) -> None:
        """Hand the drain to the reconciler (its routes change, so the next pass re-sends them) and to status."""
        withdrawn = self.drain.withdrawn()
        self.reconciler.drained, self.reconciler.withdrawn = self.drain.drained, withdrawn
        self.metrics.drained.set(1 if self.drain.drained else 0)
        if self.drain != self.state.drain:
            self._publish(drain=self.drain)
        withdraw_at = self.drain.withdraw_at
        if withdraw_at is not None and not withdrawn:
            self.wakeups.post_in(max(withdraw_at - time.time(), 0.0) + 0.001, Reason.DRAIN)

    def reload(self, config: AgentConfig) -> bool:
        """Take a new, already validated config, or refuse it whole (False) if part of it needs a restart.
        The next pass re-sends only prefixes whose routes changed."""
        needs_restart = [name for name in RESTART_ONLY if getattr(config, name) != getattr(self.config, name)]
        if needs_restart:
            log.error("reload refused, still running on the previous configuration: %s change(s) need a restart",
                      ", ".join(needs_restart))
            self.metrics.reloads.labels(result="refused").inc()
            return False
        self.config = config
        self.reconciler.config = config
        self.damper.config = config.dampening
        self.drain = dataclasses.replace(self.drain, withdraw_after=config.drain.withdraw_after)
        self._apply_drain()
        self.discovery.reconfigure(config.uplinks, config.netns_dirs, config.timers.netns_rescan)
        self._timers_reloaded.set()
        setup_logging(config.log.level, config.log.format)
        log.info("configuration reloaded")
        self.metrics.reloads.labels(result="ok").inc()
        self.wakeups.post(Reason.RELOAD)
        return True

    async def run(self) -> None:
        """Run until ``stop()``; raise AgentFailed if a part of the agent died for good."""
        if self.config.metrics.listen:
            try:
                await self.metrics.serve(self.config.metrics.listen)
            except OSError as exc:  # routes matter more than metrics: keep going, loudly
                log.error("metrics: cannot listen on %s: %s", self.config.metrics.listen, exc)
        await self.status_server.start()
        tasks = [
            asyncio.create_task(self._fatal_if_ends("discovery", self.discovery.run), name="discovery"),
            asyncio.create_task(self._supervised("gobgp-watch", self._watch_gobgp), name="gobgp-watch"),
            asyncio.create_task(self._supervised("drift-checks", self._drift_timer), name="drift-checks"),
        ]
        if self.docker is not None:
            tasks.append(asyncio.create_task(self._supervised("docker", self.docker.run), name="docker"))
        interval = watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(self._supervised("watchdog", lambda: self._liveness(interval)),
                                             name="watchdog"))
        try:
            await self._connect()
            await self._main_loop()
        finally:
            notify("STOPPING=1")
            self.wakeups.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.status_server.close()
            self.metrics.close()
            await self._shutdown()
        if self.failure is not None:
            raise AgentFailed(self.failure)

    async def _connect(self) -> None:
        timeout = self.config.gobgp.connect_timeout
        try:
            info = await self._beating(asyncio.wait_for(self.speaker.connect(timeout), timeout + 1))
            self.reconciler.local_as = info.asn  # for drain.as_path_prepend
        except (GobgpError, TimeoutError) as exc:
            log.error("gobgpd did not answer within connect_timeout: %s; waiting for it", exc)
            self._set_health(False, f"gobgpd unreachable at {self.config.gobgp.target}")

    async def _supervised(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``run()`` for as long as the agent runs: if it ends or raises, log, count, restart with backoff."""
        backoff = Backoff(TASK_RESTART_FIRST, TASK_RESTART_MAX)
        while True:
            started = time.monotonic()
            try:
                await run()
                log.error("task %s ended unexpectedly; restarting it", name)
            except Exception:
                log.exception("task %s failed; restarting it", name)
            self.metrics.task_restarts.labels(task=name).inc()
            if time.monotonic() - started >= TASK_HEALTHY_AFTER:
                backoff.reset()
            await asyncio.sleep(backoff.next())

    async def _fatal_if_ends(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """For a task that cannot be restarted in place: if it ends, the agent is unhealthy and exits non-zero."""
        try:
            await run()
            reason = f"task {name} ended unexpectedly"
        except Exception as exc:
            log.exception("task %s failed", name)
            reason = f"task {name} failed: {type(exc).__name__}: {exc}"
        log.critical("%s; exiting so that systemd restarts the agent", reason)
        self.failure = reason
        self.metrics.task_restarts.labels(task=name).inc()
        self._set_health(False, reason)
        self.stop()

    async def _liveness(self, interval: float) -> None:
        """Ping systemd's watchdog while the loop answers (its heartbeat is fresh), even during a long pass;
        a wedged event loop, a stuck loop or a dead part of the agent stops the pings."""
        while True:
            await asyncio.sleep(interval)
            if self.failure is None and time.monotonic() - self._heartbeat < max(interval, 2 * HEARTBEAT):
                notify("WATCHDOG=1")

    async def _beating(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work`` while keeping the loop's heartbeat going (a re-push of 10,000 paths may take a while)."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=HEARTBEAT)
                self._heartbeat = time.monotonic()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return task.result()

    async def _wait_until_synced(self) -> None:
        """Until every namespace present at start has been read, push what the namespaces read so far want,
        adds only (``Reconciler.reconcile(adds_only=True)``): gobgpd fills while discovery still reads."""
        while not self.discovery.synced.is_set() and not self._stopping:
            self._heartbeat = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._read_more.wait()), HEARTBEAT)
            if self._read_more.is_set() and not self.discovery.synced.is_set() and not self._stopping:
                await asyncio.sleep(EARLY_PUSH_EVERY)  # let a few more namespaces arrive: one push for them all
                self._read_more.clear()
                await self._beating(self._push_early())

    async def _push_early(self) -> None:
        by_namespace = self.discovery.by_namespace()
        if not by_namespace or self.docker is not None:
            return  # nothing yet, the host's own namespace (its addresses are never ours) unread, or Docker decides
        damped = self.damper.filter(by_namespace, time.monotonic())
        try:
            self.reconciler.host_addresses = self.discovery.host_addresses()
            plan = await self.reconciler.reconcile(damped.by_namespace, adds_only=True)
        except Exception as exc:  # the first whole pass does it all again
            log.debug("early push failed: %s", exc)
            return
        if plan.add:
            log.debug("pushed %d path(s) while namespaces are still being read", len(plan.add))

    async def _main_loop(self) -> None:
        await self._wait_until_synced()
        if self._stopping:
            return
        log.info("discovery synced: %d namespace(s)", self.discovery.stats().namespaces)
        self.wakeups.post(Reason.CHANGE)
        retry = Backoff(RETRY_FIRST, RETRY_MAX)
        while not self._stopping:
            self._heartbeat = time.monotonic()
            if not await self.wakeups.wait(HEARTBEAT):
                continue
            quiet_for = time.monotonic() - self._last_pass_ended
            if quiet_for < self.config.timers.settle and not self._stopping:
                await asyncio.sleep(self.config.timers.settle - quiet_for)
            reasons, first_change_at = self.wakeups.take()
            if self._stopping:
                break
            # gobgpd (re)appeared, a peer changed, or the periodic check (a neighbor that a reload of gobgpd's
            # config added sends no peer event)
            self._release_due |= bool(reasons & {Reason.GOBGP, Reason.PEERS, Reason.RIB_CHECK})
            if Reason.FULL_READ in reasons:
                self.reconciler.invalidate()
            elif Reason.RIB_CHECK in reasons:
                await self._beating(self._check_rib())  # a frozen gobgpd holds it for rpc_timeout
            if not self._pass_needed(reasons):
                await self._beating(self._release_peers())
                continue
            drift_check = self._in_sync and not reasons & WANTING_A_PASS  # so a change it makes repairs drift
            result = await self._beating(self._pass(first_change_at))
            self._last_pass_ended = time.monotonic()
            self.metrics.observe_pass(result, drift_check=drift_check)
            if result.ok:
                retry.reset()
                self._in_sync = True
                self._set_health(True)
                await self._beating(self._release_peers())  # before READY=1: a ready agent has released them
                if not self._ready:
                    self._ready = True
                    log.info("in sync with gobgpd: %d path(s)", len(self.reconciler.actual or {}))
                    notify("READY=1")
                    if self._on_ready is not None:
                        self._on_ready()
            else:
                self._in_sync = False
                self._set_health(False, f"reconcile failed: {result.error}")
                self.wakeups.post_in(retry.next(), Reason.RETRY)

    def _pass_needed(self, reasons: set[Reason]) -> bool:
        """False when nothing changed on either side since the last good pass, so its plan would be empty
        (at 10,000 endpoints a pass is ~0.35 s of CPU, and the periodic checks would otherwise pay it)."""
        return bool(reasons & WANTING_A_PASS) or not self._in_sync or self.reconciler.actual is None

    async def _check_rib(self) -> None:
        try:
            moved = await self.reconciler.table_moved()
        except GobgpError as exc:
            log.warning("rib check: %s", exc)
            self._set_health(False, f"gobgpd did not answer the rib check: {type(exc).__name__}")
            moved = True
        if moved and self.reconciler.actual is not None:
            log.debug("gobgpd's path counts moved without us: re-reading its table")
            self.reconciler.invalidate()

    async def _release_peers(self) -> None:
        """Once gobgpd holds our whole table, enable the neighbors it holds back for us (agent/peers.py).
        "Whole" is checked, not assumed: gobgpd's path counts must be what our last full read plus our own
        changes imply (the shipped import policy lets only local paths in), so after a pass that began before
        gobgpd restarted, or a table that moved, the agent re-reads and pushes first."""
        if not self._release_due or not self._in_sync:
            return
        try:
            if await self.reconciler.table_moved():
                log.info("gobgpd's table is not the one we pushed: re-reading it before enabling BGP neighbors")
                self.reconciler.invalidate()
                self.wakeups.post(Reason.PEERS)
                return
            self._release_due = False
            for address in await release_held_peers(self.speaker):
                log.info("enabled BGP neighbor %s: gobgpd holds our %d path(s)", address,
                         len(self.reconciler.actual or {}))
        except GobgpError as exc:
            self._release_due = True
            log.warning("enabling held-back BGP neighbors: %s", exc)
            self.wakeups.post_in(RETRY_MAX, Reason.PEERS)

    async def _pass(self, first_change_at: float | None) -> PassResult:
        self._apply_drain()  # withdraw_after may have passed
        now = time.monotonic()
        self.pacer.interval = self.config.timers.namespace_interval
        by_namespace, next_turn = self.pacer.pace(self.discovery.by_namespace(), now)
        if next_turn is not None:  # a busy namespace held back: its turn comes then
            self.wakeups.post_in(max(next_turn - now, 0.0) + 0.001, Reason.CHANGE)
        damped = self.damper.filter(by_namespace, now)
        if damped.next_release is not None:
            self.wakeups.post_in(max(damped.next_release - time.monotonic(), 0.0) + 0.001, Reason.RELEASE)
        for endpoint in set(damped.held) - set(self._held_down):
            log.warning("holding down flapping endpoint %s", endpoint.label,
                        extra={"namespace": endpoint.netns, "interface": endpoint.ifname})
        self._held_down = damped.held
        refused_before = self.reconciler.stats.refused
        started = time.perf_counter()
        plan: Plan | None = None
        error: str | None = None
        kind = "internal"
        try:
            if self.reconciler.local_as is None and self.config.drain.as_path_prepend:  # gobgpd was down at start
                self.reconciler.local_as = (await self.speaker.connect(self.config.gobgp.connect_timeout)).asn
            self.reconciler.host_addresses = self.discovery.host_addresses()
            usable = damped.by_namespace if self.docker is None \
                else group_by_namespace(self._docker_filter(damped.endpoints))
            plan = await self.reconciler.reconcile(usable)
        except Exception as exc:  # any failure costs a retry, never the loop
            error, kind = type(exc).__name__, error_kind(exc)
            if isinstance(exc, GobgpError):
                log.warning("reconcile failed: %s", exc)
            else:
                log.exception("reconcile failed unexpectedly")
        duration = time.perf_counter() - started
        # O(endpoints) and only for what the pass publishes: after the paths went out, not before
        endpoints = flatten(by_namespace)
        stats = self.discovery.stats()
        refused = self.reconciler.stats.refused
        self._publish_pass(endpoints, damped.held, stats, refused)
        return PassResult(
            endpoints=endpoints, by_namespace=by_namespace, held_down=damped.held, namespaces=stats.namespaces,
            resyncs=stats.resyncs,
            duration=duration, plan=plan, error=error, error_kind=kind,
            event_latency=None if first_change_at is None or plan is None else time.monotonic() - first_change_at,
            prefix_counts=dict(self.reconciler.prefix_counts), refused=refused, refused_before=refused_before,
            netlink_dropped=stats.dropped,
        )

    def _docker_filter(self, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """[docker]: only the addresses Docker assigned, its networks, label communities (agent.docker_ownership)."""
        assert self.docker is not None
        filtered = self.docker.apply(endpoints, self.discovery.namespace_ids(), self.config)
        r = self.reconciler
        r.config, r.extras, r.docker_refused, r.frozen = (filtered.config, filtered.extras, filtered.refused,
                                                          self.docker.frozen)
        return filtered.endpoints

    def _publish_pass(self, endpoints: tuple[Endpoint, ...], held: tuple[Endpoint, ...], stats: DiscoveryStats,
                      refused: Mapping[Refusal, frozenset[IPNetwork]]) -> None:
        r = self.reconciler.stats
        desired = self.reconciler.desired
        for name in sorted(set(stats.missing_uplinks) - set(self.state.missing_uplinks)):
            log.warning("uplink %s does not exist in this host: no endpoint can be found on it", name,
                        extra={"interface": name})
        for name in sorted(set(self.state.missing_uplinks) - set(stats.missing_uplinks)):
            log.info("uplink %s exists now", name, extra={"interface": name})
        self._publish(endpoints=endpoints, held_down=len(held),
                      advertised=MappingProxyType(dict(self.reconciler.actual or {})),
                      sources=desired.sources if desired is not None else {}, refused=refused,
                      namespaces=stats.namespaces, resyncs=stats.resyncs, netlink_dropped=stats.dropped,
                      missing_uplinks=stats.missing_uplinks,
                      passes=r.passes, failures=r.failures, last_pass_at=r.last_pass_at,
                      last_duration=r.last_duration)

    async def _watch_gobgp(self) -> None:
        seen_ready = False
        async for event in self.speaker.watch():
            if event.kind is GobgpEventKind.READY:
                self.metrics.gobgp_up.set(1)
                if seen_ready:
                    self.metrics.gobgp_restarts.inc()
                    self._publish(gobgp_restarts=self.state.gobgp_restarts + 1)
                    log.warning("gobgpd is back; re-pushing every path")
                seen_ready = True
                self._publish(gobgp_reachable=True)
                self.reconciler.invalidate()
                self.wakeups.post(Reason.GOBGP)
                await self._refresh_peers()
            elif event.kind is GobgpEventKind.LOST:
                self.metrics.gobgp_up.set(0)
                self._publish(gobgp_reachable=False)
                self._in_sync = False
                self._set_health(False, f"lost gobgpd: {event.detail}")
                self.reconciler.invalidate()  # it may come back empty; until a pass has read it, we don't know
                self.metrics.observe_gobgpd_lost()
                log.warning("lost gobgpd: %s", event.detail)
            else:
                peer, _, state = event.detail.partition(" ")
                log.info("BGP peer %s", event.detail, extra={"peer": peer, "state": state})
                self.wakeups.post(Reason.PEERS)
                await self._refresh_peers()

    async def _refresh_peers(self) -> None:
        """Per-peer metrics from one ListPeer: on each drift check and peer event, never per scrape."""
        try:
            peers = await asyncio.wait_for(self.speaker.list_peers(), PEER_REFRESH_TIMEOUT)
        except (GobgpError, TimeoutError) as exc:
            log.debug("peer refresh: %s", exc)
            return
        self.metrics.observe_peers(peers)

    async def _drift_timer(self) -> None:
        """Repairs drift that no event announces (a path of ours deleted behind our back): every
        ``full_reconcile`` the next pass re-reads gobgpd's whole table; between, every ``rib_check``, the
        loop compares gobgpd's path counts with what it expects and re-reads at once if they moved
        (listing 10,000 paths costs seconds of CPU; counting them, two small RPCs)."""
        last_full = time.monotonic()
        while True:
            timers = self.config.timers
            self._timers_reloaded.clear()
            try:
                await asyncio.wait_for(self._timers_reloaded.wait(), min(timers.rib_check, timers.full_reconcile))
                continue  # a reload: wait by the new timers, not out the old one (it may be a day)
            except TimeoutError:
                pass
            await self._refresh_peers()
            if time.monotonic() - last_full >= timers.full_reconcile:
                last_full = time.monotonic()
                self.wakeups.post(Reason.FULL_READ)
            else:
                self.wakeups.post(Reason.RIB_CHECK)

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
            await self.speaker.close()


@contextlib.asynccontextmanager
async def running(config: AgentConfig, ready_timeout: float = 60.0, *, speaker: BgpSpeaker | None = None,
                  discovery: EndpointSource | None = None) -> AsyncIterator[Daemon]:
    """A Daemon running as a task of the current loop, in sync with gobgpd; stopped on exit."""
    ready = asyncio.Event()
    daemon = Daemon(config, speaker=speaker, discovery=discovery, on_ready=ready.set)
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
            daemon.metrics.reloads.labels(result="invalid").inc()
        finally:
            notify("READY=1")

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    def on_signal(signum: int) -> None:
        if daemon.stopping:
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
