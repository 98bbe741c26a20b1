"""Host-failure convergence in the fabric (issue #15): how long the spine and the host's leaf keep a dead host's
routes (bench/fabric_convergence.py, tests/netns/test_convergence.py, docs/convergence.md).

The fabric (containerlab/fabric.clab.yml) on this kernel without its ipvlan containers (``without_containers``):
the FRR spine and leaves, each host's gobgpd and agent, all with the shipped configs. In a copy of host1's
agent.toml its network's aggregate (10.11.0.0/24) has ``aggregate_when = "always"``, so the watched route is the
agent's own path: after a gobgpd restart the agent pushes it again exactly as it would a container's /32.
Whether the leaf and the spine keep or forget it is BGP between gobgpd and FRR (timers, graceful restart, FRR's
reaction to an interface going down), the same with or without an ipvlan container behind it.

Each case breaks host1 at a monotonic time t0 and reports, from netlink events of the spine's and leaf1's FIB
(``FibWatch``), when the route left each FIB, how often it was withdrawn there, and whether leaf1 held it as
stale (graceful-restart helper) in between, polled from its BGP table. ``restore`` then brings host1 back and
waits until the spine has the route again and leaf1 holds it fresh, so the next case starts from a healthy fabric.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import repo_root
from .embedded import NETNS_DIR, EmbeddedLab, in_netns
from .fibwatch import FibWatch
from .status import fib
from .topology import Topology, load_topology, without_containers

HOST, LEAF, SPINE = "host1", "leaf1", "spine"
HOST_ADDRESS = "192.0.2.10"  # host1 as leaf1 sees it
PREFIX = "10.11.0.0/24"  # host1's rack1 aggregate: the agent's own path in the copied agent.toml

CASES: dict[str, str] = {
    "link-leaf": "host1's uplink set down at the leaf (leaf1's eth1 `ip link set down`)",
    "link-host": "host1's uplink set down at the host (host1's eth1 down: leaf1's end loses carrier, stays up)",
    "kill": "gobgpd SIGKILLed (graceful restart on) and not started again",
    "kill-return": "gobgpd SIGKILLed and started again at once: the agent re-pushes its table, then enables the leaf",
    "freeze": "gobgpd and the agent SIGSTOPped, the link up",
}


@dataclass(frozen=True)
class Knobs:
    """Changes to the shipped configs for one run (None/empty: as shipped)."""
    hold_time: int | None = None  # host1's gobgpd.toml, the leaf neighbor
    keepalive: int | None = None
    restart_time: int | None = None
    leaf_bgp: tuple[str, ...] = ()  # extra lines in leaf1's `router bgp` block, e.g. "no bgp fast-external-failover"

    def label(self) -> str:
        parts = [f"{name}={value}" for name, value in (("hold", self.hold_time), ("keepalive", self.keepalive),
                                                        ("restart-time", self.restart_time)) if value is not None]
        return ", ".join([*parts, *(f"leaf1: {line}" for line in self.leaf_bgp)]) or "as shipped"


@dataclass
class Outcome:
    case: str
    spine_gone_s: float | None  # from t0 until the spine's FIB lost PREFIX (None: kept it)
    leaf_gone_s: float | None
    spine_withdrawals: int  # FIB removals of PREFIX from t0 to the end of the case
    leaf_withdrawals: int
    stale_at_leaf: bool  # leaf1 held host1's path as stale (graceful-restart helper) at some point
    leaf_reset_reason: str  # why leaf1's session with host1 went down: its bgpd log, else lastResetDueTo
    fresh_s: float | None = None  # kill-return: until leaf1 holds the path fresh again (our End-of-RIB in)
    recovered_s: float | None = None  # after the restore began: until the spine's FIB has PREFIX again
    extra: dict[str, Any] = field(default_factory=dict)


def convergence_topology(workdir: Path, knobs: Knobs = Knobs()) -> Topology:
    """A copy of the fabric in ``workdir`` (unique lab name), host1's aggregate always advertised, ``knobs``
    applied, ipvlan containers left out."""
    source = repo_root() / "containerlab"
    shutil.copy(source / "fabric.clab.yml", workdir / "fabric.clab.yml")
    shutil.copytree(source / "fabric", workdir / "fabric", dirs_exist_ok=True)
    agent = workdir / "fabric" / HOST / "agent.toml"
    text = agent.read_text()
    anchor = f'name = "rack1"\nprefix = "{PREFIX}"\n'
    assert anchor in text, f"{agent} changed: cannot find the rack1 network {PREFIX}"
    agent.write_text(text.replace(anchor, anchor + 'aggregate_when = "always"\n'))
    gobgpd = workdir / "fabric" / HOST / "gobgpd.toml"
    text = gobgpd.read_text()
    for key, value in (("hold-time", knobs.hold_time), ("keepalive-interval", knobs.keepalive),
                       ("restart-time", knobs.restart_time)):
        if value is not None:
            text, n = re.subn(rf"(?m)^(\s*{key} = )\d+", rf"\g<1>{value}", text)
            assert n == 1, f"{gobgpd}: expected one {key}, found {n}"
    gobgpd.write_text(text)
    frr = workdir / "fabric" / LEAF / "frr.conf"
    text = frr.read_text()
    anchor = " !\n address-family ipv4 unicast\n"  # after the neighbors: a knob may name one
    assert anchor in text, f"{frr} changed: cannot find the end of leaf1's neighbors"
    text = text.replace(anchor, "".join(f" {line}\n" for line in knobs.leaf_bgp) + anchor, 1)
    # bgpd's log (stdout: the lab's leaf1/bgpd.log) says why a session went down, e.g. "Down Interface down"
    frr.write_text(text.replace("\nrouter bgp ", "\nlog stdout informational\n!\nrouter bgp ", 1))
    topology = without_containers(load_topology(workdir / "fabric.clab.yml"), f"fconv-{uuid.uuid4().hex[:6]}")
    return topology


def settings(lab: EmbeddedLab) -> dict[str, Any]:
    """The settings in force: host1's gobgpd.toml, and what leaf1 negotiated with it and runs with."""
    spec = lab.topology.nodes[HOST]
    conf = tomllib.loads(spec.binds["/etc/gobgpd/gobgpd.toml"].read_text())
    neighbor = conf["neighbors"][0]
    leaf = lab.routers[LEAF]
    peer = json.loads(leaf.vtysh(f"show bgp neighbors {HOST_ADDRESS} json"))[HOST_ADDRESS]
    running = leaf.vtysh("show running-config")
    gr = peer.get("gracefulRestartInfo", {})
    return {
        "gobgpd_hold_time": neighbor["timers"]["config"]["hold-time"],
        "gobgpd_keepalive": neighbor["timers"]["config"]["keepalive-interval"],
        "gobgpd_restart_time": neighbor["graceful-restart"]["config"]["restart-time"],
        "gobgpd_graceful_restart": neighbor["graceful-restart"]["config"]["enabled"],
        "negotiated_hold_s": peer.get("bgpTimerHoldTimeMsecs", 0) / 1000,
        "negotiated_keepalive_s": peer.get("bgpTimerKeepAliveIntervalMsecs", 0) / 1000,
        "leaf_gr_mode": gr.get("localGrMode"),
        "host_gr_mode": gr.get("remoteGrMode"),
        "leaf_received_restart_time": gr.get("timers", {}).get("receivedRestartTimer"),
        "leaf_stalepath_time": gr.get("ipv4Unicast", {}).get("timers", {}).get("stalePathTimer"),
        "host_n_bit": gr.get("nBit"),  # RFC 8538: graceful restart after a NOTIFICATION (hold timer expiry)
        "leaf_fast_external_failover": "no bgp fast-external-failover" not in running,
    }


def _leaf_path(lab: EmbeddedLab) -> dict[str, Any] | None:
    """host1's path for PREFIX in leaf1's BGP table, or None."""
    try:
        data = json.loads(lab.routers[LEAF].vtysh(f"show bgp ipv4 unicast {PREFIX} json") or "{}")
    except (RuntimeError, ValueError):
        return None
    for path in data.get("paths", []):
        if path.get("peer", {}).get("peerId") == HOST_ADDRESS:
            return dict(path)
    return None


def _session(lab: EmbeddedLab) -> dict[str, Any]:
    try:
        data = json.loads(lab.routers[LEAF].vtysh(f"show bgp neighbors {HOST_ADDRESS} json"))
    except (RuntimeError, ValueError):
        return {}
    return dict(data.get(HOST_ADDRESS, {}))


class Fabric:
    """The running lab with FIB watches on the spine and leaf1."""

    def __init__(self, lab: EmbeddedLab) -> None:
        self.lab = lab
        self.spine = FibWatch(NETNS_DIR / lab.state.node_ns(SPINE))
        self.leaf = FibWatch(NETNS_DIR / lab.state.node_ns(LEAF))

    async def start(self, timeout: float = 180.0) -> None:
        log = self.lab.routers[LEAF].workdir / "bgpd.log"
        rejected = [line for line in log.read_text(errors="replace").splitlines() if "Config Failed" in line]
        if rejected:  # a knob FRR did not take would measure the shipped config under the knob's name
            raise RuntimeError(f"leaf1's bgpd rejected its config: {rejected}")
        await self.spine.start()
        await self.leaf.start()
        await self.healthy(timeout)

    async def stop(self) -> None:
        await self.spine.stop()
        await self.leaf.stop()

    async def healthy(self, timeout: float, dropped: int = -1) -> float:
        """Wait until the spine's FIB has PREFIX and leaf1 holds host1's path fresh over a session that leaf1 has
        seen drop more than ``dropped`` times (a new session after a fault); returns when that was."""
        deadline = time.monotonic() + timeout
        await self.spine.wait_for(PREFIX, True, timeout)
        while True:
            session = await asyncio.to_thread(_session, self.lab)
            path = await asyncio.to_thread(_leaf_path, self.lab)
            if (session.get("bgpState") == "Established" and session.get("connectionsDropped", 0) > dropped
                    and path is not None and not path.get("stale") and PREFIX in self.leaf.routes):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"leaf1 never held host1's {PREFIX} fresh again (last: {path}, {session})")
            await asyncio.sleep(0.2)

    def _signal(self, what: str, sig: int) -> None:
        os.killpg(self.lab.state.pids[f"{HOST}/{what}"], sig)

    def _link(self, node: str, up: bool) -> None:
        in_netns(self.lab.state.node_ns(node), f"ip link set eth1 {'up' if up else 'down'}")

    async def run(self, case: str, timeout: float) -> Outcome:
        """Break host1 as ``case`` says, measure, restore; ``timeout`` bounds each wait."""
        stale = False
        reason = ""
        leaf_gone: float | None = None
        done = asyncio.Event()

        async def watch_leaf() -> None:  # the BGP table's view: stale or not, and why the session went
            nonlocal stale, reason, leaf_gone
            while not done.is_set():
                # The kernel drops routes through an interface set down without a netlink event: poll as well.
                if leaf_gone is None and PREFIX not in await asyncio.to_thread(fib, self.lab, LEAF):
                    leaf_gone = time.monotonic()
                path = await asyncio.to_thread(_leaf_path, self.lab)
                stale = stale or bool(path and path.get("stale"))
                session = await asyncio.to_thread(_session, self.lab)
                if session.get("bgpState") != "Established" and not reason:
                    reason = str(session.get("lastResetDueTo", ""))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.3)

        log = self.lab.routers[LEAF].workdir / "bgpd.log"
        log_start = log.stat().st_size
        dropped = (await asyncio.to_thread(_session, self.lab)).get("connectionsDropped", 0)
        watcher = asyncio.create_task(watch_leaf())
        t0 = time.monotonic()
        if case == "link-leaf":
            self._link(LEAF, up=False)
        elif case == "link-host":
            self._link(HOST, up=False)
        elif case in ("kill", "kill-return"):
            self.lab.stop_process(f"{HOST}/gobgpd", signal.SIGKILL)
            if case == "kill-return":
                self.lab.start_process(f"{HOST}/gobgpd")
        elif case == "freeze":
            self._signal("gobgpd", signal.SIGSTOP)
            self._signal("agent", signal.SIGSTOP)
        else:
            raise ValueError(f"unknown case {case!r}: one of {', '.join(CASES)}")

        outcome = Outcome(case, None, None, 0, 0, False, "")
        try:
            if case == "kill-return":
                outcome.fresh_s = await self.healthy(timeout, dropped) - t0
            else:
                await self.spine.wait_for(PREFIX, False, timeout)
        finally:
            restore = time.monotonic()
            for watch, name in ((self.spine, "spine"), (self.leaf, "leaf")):
                gone = watch.withdrawals({PREFIX}, since=t0)
                setattr(outcome, f"{name}_withdrawals", len(gone))
                setattr(outcome, f"{name}_gone_s", gone[0].at - t0 if gone else None)
            done.set()
            await watcher
            if outcome.leaf_gone_s is None and leaf_gone is not None:
                outcome.leaf_gone_s = leaf_gone - t0
                outcome.extra["leaf_gone_silently"] = True  # no netlink event: the kernel's own flush
            outcome.stale_at_leaf, outcome.leaf_reset_reason = stale, reason
            if case in ("link-leaf", "link-host"):
                self._link(LEAF if case == "link-leaf" else HOST, up=True)
            elif case == "kill":
                self.lab.start_process(f"{HOST}/gobgpd")
            elif case == "freeze":
                self._signal("gobgpd", signal.SIGCONT)
                self._signal("agent", signal.SIGCONT)
        if case != "kill-return":
            outcome.recovered_s = await self.healthy(timeout) - restore
        with log.open("rb") as f:
            f.seek(log_start)
            lines = [line for line in f.read().decode(errors="replace").splitlines() if HOST_ADDRESS in line]
        outcome.extra["leaf_log"] = [line[:200] for line in lines[:20]]
        down = next((m.group(1) for line in lines if (m := re.search(r"ADJCHANGE: .* Down (.+)$", line))), None)
        outcome.leaf_reset_reason = down or outcome.leaf_reset_reason
        return outcome
