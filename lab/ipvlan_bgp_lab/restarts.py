"""gobgpd restarts in the embedded lab, and what the ToR sees of them (bench/restarts.py, tests/vm, docs/restarts.md).

The lab is a copy of the reference rack whose host1 also advertises ``count`` extra host routes: addresses on a
few real ipvlan containers (1,000 addresses each; creating 10,000 slaves one per container takes ~10 minutes
in the emulated VM, addresses take seconds). ``measure`` runs one scenario and reports, for host1's live
routes: the ToR's FIB withdrawals (target 0) and FIB changes, and the time until host1's gobgpd holds every
path again, until the ToR's session with it is back, and until the ToR holds every route fresh (no stale path
left, i.e. our End-of-RIB processed).
"""

from __future__ import annotations

import asyncio
import configparser
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from agent.gobgp import GobgpClient, GobgpError
from agent.model import LargeCommunity

from . import repo_root
from .embedded import EmbeddedLab, in_netns, save_state
from .fibwatch import FibWatch
from .netns import enter

BULK_NETWORK = ipaddress.ip_network("10.64.0.0/16")
HOST, NEIGHBOR = "host1", "192.0.2.1"  # the host whose gobgpd restarts, and its address as the ToR sees it
PER_CONTAINER = 1000
LAB_NAME = "ipvlan-bgp-restarts"


def restart_topology(workdir: Path, hold_back: bool = True) -> Path:
    """The reference rack copied to ``workdir``, host1 also advertising host routes of BULK_NETWORK.
    ``hold_back=False`` drops ``admin-down`` from host1's gobgpd.toml: the configuration before holding back."""
    shutil.copytree(repo_root() / "containerlab", workdir, dirs_exist_ok=True)
    topology = workdir / "rack.clab.yml"
    topology.write_text(topology.read_text().replace("name: ipvlan-bgp-rack", f"name: {LAB_NAME}"))
    agent = workdir / HOST / "agent.toml"
    agent.write_text("max_prefixes = 100000\nmax_prefixes_per_namespace = 100000\n" + agent.read_text()
                     + f'\n[[networks]]\nname = "bulk"\nprefix = "{BULK_NETWORK}"\nadvertise = "host"\n')
    gobgpd = workdir / HOST / "gobgpd.toml"
    text = gobgpd.read_text()
    anchor = '    ip-prefix = "10.3.0.0/24"\n    masklength-range = "24..32"\n'
    assert anchor in text, f"{gobgpd} changed: cannot add {BULK_NETWORK} to its export prefix set"
    text = text.replace(anchor, anchor + "  [[defined-sets.prefix-sets.prefix-list]]\n"
                        f'    ip-prefix = "{BULK_NETWORK}"\n    masklength-range = "16..32"\n')
    if not hold_back:
        text = text.replace("    admin-down = true\n", "")
    gobgpd.write_text(text)
    return topology


def networks_topology(workdir: Path, count: int, hold_back: bool = True) -> tuple[Path, set[str]]:
    """No ipvlan needed (this kernel): the rack's ToR and host1 only, host1's agent advertising ``count`` /32s of
    BULK_NETWORK as networks with ``aggregate_when = "always"`` (the agent's own paths, without endpoints)."""
    topology = restart_topology(workdir, hold_back)
    data = yaml.safe_load(topology.read_text())
    nodes = data["topology"]["nodes"]
    for name in ("tor", HOST):
        nodes[name]["exec"] = [line for line in nodes[name].get("exec", [])
                               if not any(word in line for word in ("netns", "ipvlan", "ip -n", "eth2", "eth3"))]
    data["name"] = f"{LAB_NAME}-nets"
    data["topology"]["nodes"] = {"tor": nodes["tor"], HOST: nodes[HOST]}
    data["topology"]["links"] = [{"endpoints": ["tor:eth1", f"{HOST}:eth1"]}]
    topology.write_text(yaml.safe_dump(data))
    agent = workdir / HOST / "agent.toml"
    text = agent.read_text()
    text = text[:text.rindex("\n[[networks]]\nname = \"bulk\"")]  # instead of the bulk network (they would overlap)
    first = int(BULK_NETWORK.network_address) + 1
    prefixes = [f"{ipaddress.ip_address(first + i)}/32" for i in range(count)]
    agent.write_text(text + "".join(f'\n[[networks]]\nprefix = "{p}"\nadvertise = "aggregate"\n'
                                    'aggregate_when = "always"\n' for p in prefixes))
    return topology, set(prefixes)


def add_bulk(lab: EmbeddedLab, count: int, start: int = 0) -> set[str]:
    """Addresses ``start`` .. ``count - 1`` of BULK_NETWORK on ipvlan L3 containers of host1's uplink (1,000 per
    container; ``start`` a multiple of that, to grow an earlier call's set); returns their /32s."""
    assert start % PER_CONTAINER == 0
    host_ns = lab.state.node_ns(HOST)
    prefixes: set[str] = set()
    first = int(BULK_NETWORK.network_address) + 1
    for first_index in range(start, count, PER_CONTAINER):
        k = first_index // PER_CONTAINER
        name, ifname = f"{lab.state.prefix}blk{k}", f"blk{k}"
        lab.state.containers.append(name)
        save_state(lab.state)
        for line in (f"ip netns add {name}", f"ip link add {ifname} link eth1 type ipvlan mode l3",
                     f"ip link set {ifname} netns {name}"):
            in_netns(host_ns, line)
        addresses = [str(ipaddress.ip_address(first + i))
                     for i in range(first_index, min(first_index + PER_CONTAINER, count))]
        batch = "".join(f"address add {a}/{BULK_NETWORK.prefixlen} dev {ifname}\n" for a in addresses)
        subprocess.run([*enter(host_ns), "ip", "-n", name, "-batch", "-"], input=batch + f"link set {ifname} up\n",
                       text=True, check=True, capture_output=True)
        prefixes.update(f"{a}/32" for a in addresses)
    return prefixes


def unit_kill_signal(unit: Path) -> signal.Signals:
    """The signal systemd's stop path sends for this unit (or drop-in): KillSignal=, SIGTERM if unset."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    name = parser.get("Service", "KillSignal", fallback="SIGTERM")
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


def replace_binary(path: Path, source: Path = Path("/usr/bin/gobgpd")) -> None:
    """Install ``source`` at ``path`` the way dpkg unpacks a file: a full copy beside it, then a rename."""
    staged = path.with_name(path.name + ".dpkg-new")
    shutil.copy2(source, staged)
    os.replace(staged, path)


class Tor:
    """The FRR ToR's view of one neighbor, read through vtysh (off the event loop)."""

    def __init__(self, lab: EmbeddedLab, router: str = "tor", neighbor: str = NEIGHBOR) -> None:
        self.frr = lab.routers[router]
        self.neighbor = neighbor

    async def _json(self, command: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(await asyncio.to_thread(self.frr.vtysh, command) or "{}")
        except RuntimeError:  # bgpd busy or restarting
            return {}
        return data

    async def established_since(self, wall_clock: float) -> bool:
        peer = (await self._json(f"show bgp neighbors {self.neighbor} json")).get(self.neighbor, {})
        return bool(peer.get("bgpState") == "Established"
                    and peer.get("bgpTimerUpEstablishedEpoch", 0) >= int(wall_clock) - 1)  # whole seconds

    async def fresh(self, prefixes: set[str]) -> bool:
        """Every prefix present, and no stale path left in the table (graceful restart over)."""
        routes: dict[str, list[dict[str, Any]]] = (await self._json("show ip bgp json")).get("routes", {})
        stale = any(path.get("stale") for paths in routes.values() for path in paths)
        return not stale and prefixes <= set(routes)


async def until(check: Callable[[], Awaitable[bool]], started: float, timeout: float, what: str) -> float:
    """Seconds from ``started`` (monotonic) until ``check`` is true."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def gobgpd_paths(lab: EmbeddedLab) -> int:
    async with GobgpClient(lab.gobgp_api(HOST), LargeCommunity(0, 0, 0), rpc_timeout=5) as client:
        try:
            return await client.path_count(4)
        except GobgpError:
            return -1


async def measure(lab: EmbeddedLab, fib: FibWatch, action: Callable[[], Awaitable[None]], live: set[str],
                  gone: frozenset[str] = frozenset(), timeout: float = 900.0, settle: float = 5.0) -> dict[str, Any]:
    """Run ``action`` (a restart of some kind), then wait until host1's gobgpd holds its ``live`` routes, the
    ToR's session is back and the ToR holds them all fresh; ``gone`` are routes that must have left the ToR.
    Counts the ToR's FIB events for host1's routes from the start of the action to ``settle`` s after that."""
    tor = Tor(lab)
    mark, wall, overflows = time.monotonic(), time.time(), fib.overflows
    await action()
    action_s = time.monotonic() - mark
    repushed_s = await until(lambda: _at_least(lab, len(live)), mark, timeout, "host1's gobgpd holding every path")
    established_s = await until(lambda: tor.established_since(wall), mark, timeout, "the ToR's session with host1")
    complete_s = await until(lambda: tor.fresh(live), mark, timeout, "every route fresh at the ToR")
    await asyncio.sleep(settle)  # late FIB events: a stale flush would come right after End-of-RIB
    events = [e for e in fib.events if e.at >= mark and e.prefix in live | gone]
    return {
        "paths": len(live),
        "tor_withdrawals": sum(1 for e in events if not e.added and e.prefix in live),
        "tor_fib_changes": sum(1 for e in events if e.prefix in live),
        "gone_still_in_tor_fib": sorted(p for p in gone if p in fib.routes),
        "live_missing_from_tor_fib": len([p for p in live if p not in fib.routes]),
        "fib_watch_overflows": fib.overflows - overflows,  # > 0: events in between known only from a re-dump
        "action_s": round(action_s, 2),
        "gobgpd_full_s": round(repushed_s, 2),
        "session_back_s": round(established_s, 2),
        "complete_rib_s": round(complete_s, 2),
    }


async def _at_least(lab: EmbeddedLab, count: int) -> bool:
    return await gobgpd_paths(lab) >= count


Action = Callable[[], Awaitable[None]]


def scenarios(lab: EmbeddedLab, unit: Path, bulk: set[str], pause: float = 10.0) -> dict[str, tuple[Action, str]]:
    """The restarts to measure, by name, each with the bulk /32 it removes ("" for none). ``unit`` is the shipped
    gobgpd unit (or drop-in) whose stop path (KillSignal=) b) and c) follow. The reboot scenarios delete an
    address while both are down (its route must leave the ToR, the others must stay); they and the agent-down one
    wait ``pause`` s between the two starts."""
    stop_signal = unit_kill_signal(unit)
    gobgpd, agent = f"{HOST}/gobgpd", f"{HOST}/agent"

    # Two secondary addresses of the first container, blk0: deleting its primary would take every address with it.
    removable = sorted(bulk, key=lambda p: ipaddress.ip_network(p))[:PER_CONTAINER][-2:]

    async def run(step: Callable[..., object], *args: Any) -> None:
        await asyncio.to_thread(step, *args)

    async def crash() -> None:
        await run(lab.restart, gobgpd, signal.SIGKILL)

    async def unit_restart() -> None:  # `systemctl restart gobgpd`
        await run(lab.stop_process, gobgpd, stop_signal)
        await run(lab.start_process, gobgpd)

    async def upgrade() -> None:  # dpkg: stop, unpack the new binary, start
        await run(lab.stop_process, gobgpd, stop_signal)
        await run(replace_binary, Path(lab.gobgpd))
        await run(lab.start_process, gobgpd)

    async def agent_down() -> None:
        await run(lab.stop_process, agent, signal.SIGTERM)
        await unit_restart()
        await asyncio.sleep(pause)
        await run(lab.start_process, agent)

    def reboot(first: str, second: str, gone: str) -> Action:
        async def action() -> None:
            await run(lab.stop_process, agent, signal.SIGTERM)
            await run(lab.stop_process, gobgpd, stop_signal)
            address = gone.removesuffix("/32")
            await run(in_netns, lab.state.node_ns(HOST), f"ip -n {lab.state.prefix}blk0 address del {address}/"
                      f"{BULK_NETWORK.prefixlen} dev blk0")  # a container gone while the host was down
            await run(lab.start_process, first)
            await asyncio.sleep(pause)
            await run(lab.start_process, second)
        return action

    plans: dict[str, tuple[Action, str]] = {"a_sigkill": (crash, ""), "b_unit_restart": (unit_restart, ""),
                                             "c_upgrade": (upgrade, ""), "agent_down": (agent_down, "")}
    if len(removable) == 2:  # the reboot scenarios need bulk containers
        plans["boot_gobgpd_first"] = (reboot(gobgpd, agent, removable[0]), removable[0])
        plans["boot_agent_first"] = (reboot(agent, gobgpd, removable[1]), removable[1])
    return plans
