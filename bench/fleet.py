"""Fleet scale in the fabric (issue #15 item 5): N hosts x M ipvlan containers under one FRR spine and two leaves.

Each size and advertise mode gets a fresh embedded lab generated from the fabric's own configs
(containerlab/fabric/host1/gobgpd.toml is the template for every host's gobgpd), with the agents and sessions up
before anything is measured. Then, all at once, every host's M containers appear (namespaces, one `ip -batch` of
ipvlan L3 slaves per host, address and link up), and the figures are:

  converge  seconds from the first container until the spine's kernel FIB holds every expected route (each
            container's /32, or each host's aggregate); when the last container was configured
  spine     BGP table (prefixes, paths received) and FIB routes; bgpd/zebra peak RSS
  agents    each agent's CPU-seconds (since its start, and during the convergence) and RSS (VmRSS, VmHWM)
  leaf      leaf1's FRR killed and restarted: seconds until the spine lost leaf1's routes, and until its FIB
            holds every route again

Runs in the VM where this kernel has no ipvlan. Writes docs/fleet/fleet-<time>.json (with the commit that
measured it) and renders docs/fleet.md from every JSON there (`--render` only renders).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ipaddress
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ipvlan_bgp_lab.embedded import STATE_ROOT, EmbeddedLab  # noqa: E402
from ipvlan_bgp_lab.fibwatch import FibWatch  # noqa: E402
from ipvlan_bgp_lab.topology import load_topology  # noqa: E402
from provenance import code_state  # noqa: E402

from agent.netns import open_netlink_in  # noqa: E402

RESULTS = REPO / "docs" / "fleet"
DOC = REPO / "docs" / "fleet.md"
TEMPLATE = REPO / "containerlab" / "fabric" / "host1" / "gobgpd.toml"
MODES = ("host", "aggregate")
SPINE_AS, LEAF_AS, HOST_AS = 65100, 65101, 65201  # leaf k: LEAF_AS + k - 1, host k: HOST_AS + k - 1
LINKS = ipaddress.IPv4Network("172.30.0.0/16")  # one /30 per link
CONTAINERS = ipaddress.IPv4Network("10.64.0.0/10")  # one network per host, sized to its containers
UPLINK = "eth1"
VM_MEMORY = "6G"  # 8 agents + 8 gobgpd + 2,000 namespaces; 2G ran out at 8 x 250 (see docs/fleet.md)

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2


# ---------------------------------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Fleet:
    hosts: int
    containers: int  # per host
    advertise: str  # "host" (a /32 per container) or "aggregate" (one prefix per host)

    @property
    def host_names(self) -> list[str]:
        return [f"h{k}" for k in range(1, self.hosts + 1)]

    def leaf_of(self, k: int) -> str:
        """Hosts alternate between the two leaves (h1 -> leaf1, h2 -> leaf2, ...)."""
        return f"leaf{(k - 1) % 2 + 1}"

    @property
    def network_prefixlen(self) -> int:
        return 32 - math.ceil(math.log2(self.containers + 2))  # network and broadcast addresses kept free

    def network(self, k: int) -> ipaddress.IPv4Network:
        size = 2 ** (32 - self.network_prefixlen)
        return ipaddress.IPv4Network(f"{CONTAINERS.network_address + (k - 1) * size}/{self.network_prefixlen}")

    def addresses(self, k: int) -> list[str]:
        return [str(a) for a in itertools.islice(self.network(k).hosts(), self.containers)]

    def expected(self, hosts: list[int] | None = None) -> set[str]:
        """The spine's FIB entries this fleet should produce (of ``hosts``; default all)."""
        chosen = hosts or list(range(1, self.hosts + 1))
        if self.advertise == "aggregate":
            return {str(self.network(k)) for k in chosen}
        return {f"{a}/32" for k in chosen for a in self.addresses(k)}


def routes_at_spine(hosts: int, containers: int, advertise: str) -> int:
    """The spine's route count for a fleet (what docs/fleet.md states): N x M host routes, or N aggregates."""
    return hosts * containers if advertise == "host" else hosts


# ---------------------------------------------------------------------------------------------------- topology

def _substitute(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"{TEMPLATE}: expected {old!r} exactly once; the fleet's generator needs updating")
    return text.replace(old, new)


def host_gobgpd_conf(template: str, asn: int, router_id: str, leaf_address: str, leaf_as: int,
                     network: ipaddress.IPv4Network) -> str:
    """host1's gobgpd config (timers, graceful restart, policies) for another host, AS, leaf and network."""
    text = f"# generated by bench/fleet.py from {TEMPLATE.relative_to(REPO)}\n" + template
    text = _substitute(text, "as = 65011", f"as = {asn}")
    text = _substitute(text, 'router-id = "192.0.2.10"', f'router-id = "{router_id}"')
    text = _substitute(text, 'neighbor-address = "192.0.2.9"', f'neighbor-address = "{leaf_address}"')
    text = _substitute(text, "peer-as = 65101", f"peer-as = {leaf_as}")
    prefix_sets = re.compile(r"(\[\[defined-sets\.prefix-sets\]\].*?)(?=\n\[\[policy-definitions\]\])", re.S)
    if len(prefix_sets.findall(text)) != 1:
        raise ValueError(f"{TEMPLATE}: expected one [[defined-sets.prefix-sets]] block before the policies")
    block = ('[[defined-sets.prefix-sets]]\n  prefix-set-name = "ipvlan-networks-v4"\n'
             '  [[defined-sets.prefix-sets.prefix-list]]\n'
             f'    ip-prefix = "{network}"\n    masklength-range = "{network.prefixlen}..32"\n')
    return prefix_sets.sub(lambda _: block, text)


def agent_conf(fleet: Fleet, k: int, netns_dir: Path, run_dir: Path) -> str:
    return f"""# generated by bench/fleet.py
uplinks = ["{UPLINK}"]
ownership_community = "{HOST_AS + k - 1}:4242:1"
netns_dirs = ["{netns_dir}"]
max_prefixes = {max(10_000, fleet.containers + 10)}
max_prefixes_per_namespace = 10

[gobgp]
target = "127.0.0.1:50051"

[status]
socket = "{run_dir / f'h{k}.sock'}"

[drain]
state_file = "{run_dir / f'h{k}.drained'}"

[metrics]
listen = ""

[[networks]]
name = "rack{k}"
prefix = "{fleet.network(k)}"
advertise = "{fleet.advertise}"
"""


def frr_conf(name: str, asn: int, router_id: str, neighbors: list[tuple[str, int, str]], import_list: str) -> str:
    """An FRR router as the fabric's (datacenter defaults, ECMP across ASes), neighbours (address, AS, name)."""
    lines = ["! generated by bench/fleet.py", "frr defaults datacenter", f"hostname {name}", "ip forwarding", "!",
             f"router bgp {asn}", f" bgp router-id {router_id}", " bgp bestpath as-path multipath-relax"]
    for address, peer_as, description in neighbors:
        lines += [f" neighbor {address} remote-as {peer_as}", f" neighbor {address} description {description}",
                  f" neighbor {address} timers connect 1"]
    lines += [" !", " address-family ipv4 unicast", "  maximum-paths 16"]
    lines += [f"  neighbor {address} prefix-list {import_list} in" for address, _, _ in neighbors]
    lines += [" exit-address-family", "!", f"ip prefix-list {import_list} seq 10 permit 10.0.0.0/8 ge 8 le 32", "!",
              "line vty", "!"]
    return "\n".join(lines) + "\n"


def write_topology(fleet: Fleet, directory: Path, name: str) -> Path:
    """A containerlab file for the fleet (spine, leaf1, leaf2, hosts) and every node's config under ``directory``."""
    template = TEMPLATE.read_text()
    subnets = LINKS.subnets(new_prefix=30)
    nodes: dict[str, dict[str, Any]] = {}
    links: list[dict[str, list[str]]] = []
    execs: dict[str, list[str]] = {"spine": [], "leaf1": [], "leaf2": []}
    neighbors: dict[str, list[tuple[str, int, str]]] = {"spine": [], "leaf1": [], "leaf2": []}

    def link(a: str, a_if: str, b: str, b_if: str) -> tuple[str, str]:
        first, second = (str(h) for h in itertools.islice(next(subnets).hosts(), 2))
        for node, ifname, address in ((a, a_if, first), (b, b_if, second)):
            execs.setdefault(node, []).extend([f"ip addr add {address}/30 dev {ifname}", f"ip link set {ifname} up"])
        links.append({"endpoints": [f"{a}:{a_if}", f"{b}:{b_if}"]})
        return first, second

    for leaf_number in (1, 2):
        leaf = f"leaf{leaf_number}"
        spine_side, leaf_side = link("spine", f"eth{leaf_number}", leaf, "eth0")
        neighbors["spine"].append((leaf_side, LEAF_AS + leaf_number - 1, leaf))
        neighbors[leaf].append((spine_side, SPINE_AS, "spine"))
    run_dir = directory / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    for k, host in enumerate(fleet.host_names, start=1):
        leaf = fleet.leaf_of(k)
        leaf_side, host_side = link(leaf, f"eth{k}", host, UPLINK)
        neighbors[leaf].append((host_side, HOST_AS + k - 1, host))
        leaf_as = LEAF_AS + int(leaf[-1]) - 1
        (directory / host).mkdir(exist_ok=True)
        netns_dir = directory / "netns" / host
        netns_dir.mkdir(parents=True, exist_ok=True)
        (directory / host / "gobgpd.toml").write_text(
            host_gobgpd_conf(template, HOST_AS + k - 1, host_side, leaf_side, leaf_as, fleet.network(k)))
        (directory / host / "agent.toml").write_text(agent_conf(fleet, k, netns_dir, run_dir))
        nodes[host] = {"kind": "linux", "image": "ipvlan-bgp-agent:latest", "exec": execs[host],
                       "binds": [f"{host}/gobgpd.toml:/etc/gobgpd/gobgpd.toml",
                                 f"{host}/agent.toml:/etc/ipvlan-bgp/agent.toml"]}
    for router, asn, router_id, import_list in (("spine", SPINE_AS, "10.255.255.1", "from-leaves"),
                                                ("leaf1", LEAF_AS, "10.255.255.11", "from-hosts"),
                                                ("leaf2", LEAF_AS + 1, "10.255.255.12", "from-hosts")):
        (directory / router).mkdir(exist_ok=True)
        (directory / router / "frr.conf").write_text(frr_conf(router, asn, router_id, neighbors[router], import_list))
        nodes[router] = {"kind": "linux", "image": "quay.io/frrouting/frr:8.4.1", "exec": execs[router],
                         "binds": [f"{router}/frr.conf:/etc/frr/frr.conf"]}
    path = directory / f"{name}.clab.yml"
    path.write_text(yaml.safe_dump({"name": name, "topology": {"nodes": nodes, "links": links}}, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------------- containers

def create_namespace(path: Path) -> None:
    """A network namespace bound to ``path``, made in this process (unshare + bind mount, no program spawned:
    `unshare --net=FILE` per container would cost 2,000 process starts in the emulated VM)."""
    path.touch()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"unshare: {os.strerror(ctypes.get_errno())}")
        try:
            if _libc.mount(b"/proc/thread-self/ns/net", str(path).encode(), None, _MS_BIND, None) != 0:
                raise OSError(ctypes.get_errno(), f"bind mount {path}: {os.strerror(ctypes.get_errno())}")
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the bench's namespace")
    finally:
        os.close(home)


def remove_namespace(path: Path) -> None:
    _libc.umount2(str(path).encode(), _MNT_DETACH)
    path.unlink(missing_ok=True)


async def configure(path: Path, address: str, prefixlen: int) -> None:
    """Address and link up on the container's eth0, through a netlink socket inside its namespace."""
    from pyroute2 import AsyncIPRoute

    ipr = AsyncIPRoute(fileno=open_netlink_in(str(path), 1 << 16).detach())
    try:
        (index,) = await ipr.link_lookup(ifname="eth0")
        await ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        await ipr.link("set", index=index, state="up")
    finally:
        ipr.close()


async def start_containers(lab: EmbeddedLab, fleet: Fleet, netns_root: Path) -> float:
    """Every host's containers at once: namespaces (round robin over hosts), one `ip -batch` of ipvlan L3 slaves
    per host (all hosts in parallel), then each container's address and link up. Returns when the last is up."""
    paths = {k: [netns_root / f"h{k}" / f"c{i}" for i in range(fleet.containers)] for k in range(1, fleet.hosts + 1)}
    for i in range(fleet.containers):
        for k in paths:
            create_namespace(paths[k][i])
    batches = []
    for k, host_paths in paths.items():
        lines = "".join(f"link add link {UPLINK} name eth0 netns {p} type ipvlan mode l3\n" for p in host_paths)
        proc = await asyncio.create_subprocess_exec("nsenter", f"--net=/run/netns/{lab.state.node_ns(f'h{k}')}",
                                                    "ip", "-batch", "-", stdin=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)
        batches.append((proc, proc.communicate(lines.encode())))
    for proc, done in batches:
        _, err = await done
        if proc.returncode != 0:
            raise RuntimeError(f"ip -batch of ipvlan slaves failed: {err.decode()[:2000]}")
    prefixlen = fleet.network_prefixlen
    addresses = {k: fleet.addresses(k) for k in paths}
    pending = [(paths[k][i], addresses[k][i]) for i in range(fleet.containers) for k in paths]
    limit = asyncio.Semaphore(32)

    async def one(path: Path, address: str) -> None:
        async with limit:
            await configure(path, address, prefixlen)

    await asyncio.gather(*(one(p, a) for p, a in pending))
    return time.monotonic()


# ---------------------------------------------------------------------------------------------------- measuring

def proc_figures(pid: int) -> dict[str, float]:
    """CPU-seconds (user + system) and memory (MiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kib = {key: int(status[key].split()[0]) for key in ("VmRSS", "VmHWM")}
    return {"cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
            "rss_mib": kib["VmRSS"] / 1024, "hwm_mib": kib["VmHWM"] / 1024}


def processes(lab: EmbeddedLab, what: str) -> dict[str, dict[str, float]]:
    """proc_figures of every ``*/what`` process of the lab (``agent``, ``gobgpd``, ``bgpd``, ``zebra``)."""
    return {label.split("/")[0]: proc_figures(pid) for label, pid in sorted(lab.state.pids.items())
            if label.endswith(f"/{what}")}


def spine_table(lab: EmbeddedLab) -> dict[str, int]:
    """The spine's BGP table: prefixes and paths (from the table itself: the summary's ribCount also counts the
    radix tree's inner nodes), and what FRR says the RIB's memory is."""
    table = lab.routers["spine"].bgp_table()
    summary = lab.routers["spine"].bgp_summary().get("ipv4Unicast", {})
    return {"prefixes": len(table), "paths": sum(len(paths) for paths in table.values()),
            "rib_memory_bytes": int(summary.get("ribMemory", 0))}


async def wait_until(watch: FibWatch, done: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> float:
    """Monotonic time at which ``done(watch.routes)`` first held (woken by the watch, no polling)."""
    deadline = time.monotonic() + timeout
    while not done(watch.routes):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        watch.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.changed.wait(), min(remaining, 5.0))
    return time.monotonic()


def became(watch: FibWatch, prefixes: set[str], present: bool, since: float) -> float:
    """When the last of ``prefixes`` became present (absent) in the FIB, from the watch's events since ``since``:
    the condition may have held long before anyone looked (an aggregate is out with a host's first container)."""
    at: dict[str, float] = {}
    for event in watch.events:
        if event.at < since or event.prefix not in prefixes:
            continue
        if event.added != present:
            at.pop(event.prefix, None)
        elif event.prefix not in at:  # a replace (RTM_NEWROUTE again) does not move the time it appeared
            at[event.prefix] = event.at
    if at.keys() != prefixes:
        raise RuntimeError(f"{len(prefixes - at.keys())} prefixes never {'appeared' if present else 'left'} "
                           "in the watched events")
    return max(at.values())


async def sessions_up(lab: EmbeddedLab, timeout: float) -> float:
    """Seconds until every BGP session of every router is Established (the agents enable their hosts' peers)."""
    t0 = time.monotonic()
    while True:
        down = [f"{name}->{address}" for name, router in lab.routers.items()
                for address, peer in router.bgp_summary().get("ipv4Unicast", {}).get("peers", {}).items()
                if peer.get("state") != "Established"]
        if not down:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"BGP sessions not up after {timeout:.0f} s: {', '.join(down)}")
        await asyncio.sleep(1.0)


@contextlib.asynccontextmanager
async def fleet_lab(fleet: Fleet, name: str) -> AsyncIterator[tuple[EmbeddedLab, Path]]:
    base = Path(tempfile.mkdtemp(prefix="fleet-", dir=os.environ.get("IBGP_GUEST_TMP")))
    lab = EmbeddedLab(load_topology(write_topology(fleet, base, name)))
    try:
        lab.up(progress=lambda line: print(f"  lab: {line}", flush=True))
        yield lab, base / "netns"
    except BaseException:
        for log in sorted(Path(STATE_ROOT / name).glob("*/*.log")):  # gone after down: show why it failed
            print(f"--- {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]), flush=True)
        raise
    finally:
        lab.down()
        for host_dir in (base / "netns").iterdir():
            for ns in host_dir.iterdir():
                remove_namespace(ns)
        shutil.rmtree(base, ignore_errors=True)


async def run_fleet(fleet: Fleet, leaf_restart: bool = True, timeout: float = 1200.0,
                    name: str = "fleet") -> dict[str, Any]:
    """One fleet, start to finish: lab up, containers at once, figures, leaf1 restarted, figures, lab down."""
    print(f"fleet {fleet.hosts} x {fleet.containers}, advertise = {fleet.advertise}", flush=True)
    result: dict[str, Any] = {"hosts": fleet.hosts, "containers_per_host": fleet.containers,
                              "advertise": fleet.advertise, "network_prefixlen": fleet.network_prefixlen,
                              "expected_spine_routes": routes_at_spine(fleet.hosts, fleet.containers, fleet.advertise)}
    wanted = fleet.expected()
    assert len(wanted) == result["expected_spine_routes"]
    started = time.monotonic()
    async with fleet_lab(fleet, name) as (lab, netns_root):
        result["sessions_up_s"] = await sessions_up(lab, timeout)
        result["lab_up_s"] = time.monotonic() - started
        print(f"  lab up and every session Established after {result['lab_up_s']:.1f} s", flush=True)
        watch = await FibWatch(Path(f"/run/netns/{lab.state.node_ns('spine')}")).start()
        try:
            agents_before = processes(lab, "agent")
            t0 = time.monotonic()
            created = await start_containers(lab, fleet, netns_root)
            result["containers_created_s"] = created - t0
            print(f"  {fleet.hosts * fleet.containers} containers up after {created - t0:.1f} s", flush=True)
            await wait_until(watch, lambda routes: wanted <= routes.keys(), timeout, "every route in the spine's FIB")
            converged = became(watch, wanted, True, t0)
            result["spine_fib_complete_s"] = converged - t0
            result["spine_fib_after_last_container_s"] = max(0.0, converged - created)
            print(f"  spine FIB complete after {converged - t0:.1f} s", flush=True)
            result["spine_fib_routes"] = len(wanted & watch.routes.keys())
            result["spine_fib_unexpected"] = sorted(set(watch.routes) - wanted - _connected(watch))[:20]
            result["spine_bgp"] = spine_table(lab)
            agents = processes(lab, "agent")
            for host, figures in agents.items():
                figures["cpu_during_start_s"] = figures["cpu_s"] - agents_before[host]["cpu_s"]
            result["agents"] = agents
            result["gobgpd"] = processes(lab, "gobgpd")
            result["spine_daemons"] = {what: processes(lab, what)["spine"] for what in ("bgpd", "zebra")}
            if leaf_restart:
                result["leaf_restart"] = await restart_leaf(lab, fleet, watch, wanted, timeout)
        finally:
            await watch.stop()
    result["total_s"] = time.monotonic() - started
    return result


def _connected(watch: FibWatch) -> set[str]:
    return {p for p in watch.routes if not p.startswith("10.")}


async def restart_leaf(lab: EmbeddedLab, fleet: Fleet, watch: FibWatch, wanted: set[str],
                       timeout: float) -> dict[str, Any]:
    """Kill leaf1's zebra and bgpd and start them again; the spine's FIB without leaf1's routes, then whole."""
    behind_leaf1 = fleet.expected([k for k in range(1, fleet.hosts + 1) if fleet.leaf_of(k) == "leaf1"])
    agents_before = processes(lab, "agent")
    t0 = time.monotonic()
    await asyncio.to_thread(lab.restart, "leaf1/bgpd", signal.SIGKILL)
    restarted = time.monotonic()
    await wait_until(watch, lambda routes: not (behind_leaf1 & routes.keys()), timeout,
                     "leaf1's routes gone from the spine's FIB")
    lost = became(watch, behind_leaf1, False, t0)
    await wait_until(watch, lambda routes: wanted <= routes.keys(), timeout, "every route back in the spine's FIB")
    back = became(watch, behind_leaf1, True, t0)
    print(f"  leaf1 restarted: its routes gone from the spine after {lost - t0:.1f} s, all back after "
          f"{back - t0:.1f} s", flush=True)
    agents = processes(lab, "agent")
    return {"leaf1_routes": len(behind_leaf1), "frr_restarted_s": restarted - t0, "spine_lost_leaf1_s": lost - t0,
            "spine_fib_complete_s": back - t0, "spine_bgp": spine_table(lab),
            "agents_cpu_during_s": {h: agents[h]["cpu_s"] - agents_before[h]["cpu_s"] for h in agents},
            "agents_hwm_mib": {h: agents[h]["hwm_mib"] for h in agents}}


# ---------------------------------------------------------------------------------------------------- report

def _after_last(run: dict[str, Any]) -> str:
    if run["spine_fib_complete_s"] < run["containers_created_s"]:
        return f"(complete {run['containers_created_s'] - run['spine_fib_complete_s']:.1f} s before)"
    return f"{run['spine_fib_after_last_container_s']:.1f} s"


def render(results_dir: Path = RESULTS, doc: Path = DOC) -> str:
    """docs/fleet.md from every fleet-*.json (the newest run of each size and mode wins)."""
    runs: dict[tuple[int, int, str], dict[str, Any]] = {}
    for path in sorted(results_dir.glob("fleet-*.json")):
        data = json.loads(path.read_text())
        for run in data["runs"]:
            run = {**run, "commit": data["commit"][:7], "dirty": data["dirty"], "file": path.name}
            runs[(run["hosts"], run["containers_per_host"], run["advertise"])] = run
    ordered = [runs[key] for key in sorted(runs, key=lambda k: (k[0] * k[1], k[0], MODES.index(k[2])))]
    lines = [HEADER]
    lines += ["| hosts x containers | advertise | spine routes (N x M or N) | spine BGP prefixes / paths | "
              "containers up | spine FIB complete | after last container | agent CPU-s during start (max) | "
              "agent CPU-s total (max) | agent VmHWM MiB (max) | "
              "leaf1 restarted: spine lost its routes / FIB whole again | commit |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in ordered:
        agents = run["agents"].values()
        leaf = run.get("leaf_restart")
        leaf_text = (f"{leaf['leaf1_routes']} route{'s' if leaf['leaf1_routes'] != 1 else ''}: "
                     f"{leaf['spine_lost_leaf1_s']:.1f} s / "
                     f"{leaf['spine_fib_complete_s']:.1f} s" if leaf else "not run")
        lines.append(
            f"| {run['hosts']} x {run['containers_per_host']} | {run['advertise']} | {run['spine_fib_routes']} "
            f"(expected {run['expected_spine_routes']}) | "
            f"{run['spine_bgp']['prefixes']} / {run['spine_bgp']['paths']} | "
            f"{run['containers_created_s']:.1f} s | {run['spine_fib_complete_s']:.1f} s | "
            f"{_after_last(run)} | "
            f"{max(a['cpu_during_start_s'] for a in agents):.1f} | {max(a['cpu_s'] for a in agents):.1f} | "
            f"{max(a['hwm_mib'] for a in agents):.0f} | {leaf_text} | "
            f"`{run['commit']}`{' (dirty tree)' if run['dirty'] else ''} |")
    lines += ["", "What aggregation saves at the spine (same size, one aggregate per host instead of its /32s):", ""]
    for (hosts, containers, mode), run in sorted(runs.items()):
        other = runs.get((hosts, containers, "host"))
        if mode != "aggregate" or other is None:
            continue
        saved = (f"- {hosts} x {containers}: {run['spine_fib_routes']} routes instead of {other['spine_fib_routes']}; "
                 f"spine FIB complete {run['spine_fib_complete_s']:.1f} s after the first container started "
                 f"instead of {other['spine_fib_complete_s']:.1f} s")
        if run.get("leaf_restart") and other.get("leaf_restart"):
            saved += (f"; after leaf1's restart whole again in {run['leaf_restart']['spine_fib_complete_s']:.1f} s "
                      f"instead of {other['leaf_restart']['spine_fib_complete_s']:.1f} s")
        lines.append(saved + ".")
    lines += ["", "Per agent at the largest size of each mode (CPU-seconds since its start / during the start of",
              "the containers, VmRSS and VmHWM in MiB), and the spine's daemons:", ""]
    for mode in MODES:
        sized = [r for r in ordered if r["advertise"] == mode]
        if not sized:
            continue
        run = max(sized, key=lambda r: r["hosts"] * r["containers_per_host"])
        lines.append(f"{run['hosts']} x {run['containers_per_host']}, advertise = {mode}: " + "; ".join(
            f"{h} {a['cpu_s']:.1f}/{a['cpu_during_start_s']:.1f} s, {a['rss_mib']:.0f}/{a['hwm_mib']:.0f} MiB"
            for h, a in run["agents"].items()) + f"; spine bgpd VmHWM {run['spine_daemons']['bgpd']['hwm_mib']:.0f} "
            f"MiB, zebra {run['spine_daemons']['zebra']['hwm_mib']:.0f} MiB, BGP RIB memory "
            f"{run['spine_bgp']['rib_memory_bytes'] / 1024:.0f} KiB.")
        lines.append("")
    for path in sorted(results_dir.glob("fleet-*.json")):
        for failed in json.loads(path.read_text()).get("failed", []):
            lines.append(f"Failed in {path.name}: {failed['hosts']} x {failed['containers_per_host']}, "
                         f"{failed['advertise']}: {failed['error']}")
            lines.append("")
    lines.append(FOOTER)
    text = "\n".join(lines)
    doc.write_text(text)
    return text


HEADER = """# Fleet scale: how the spine's route count grows with hosts and containers

<!-- generated by bench/fleet.py from docs/fleet/*.json: edit the script, not this file -->

`make fleet` (bench/fleet.py, in the VM: QEMU TCG, 2 vCPUs, absolute times are inflated many times over real
hardware, compare within a table) builds the fabric of `containerlab/fabric.clab.yml` for N hosts: one FRR spine,
two FRR leaves, hosts alternating between the leaves, each host a gobgpd (host1's config from
`containerlab/fabric/` for its AS, leaf and network) and an agent, each in its own network namespace. Once every
session is up, all N x M containers start at once (a namespace each, one `ip -batch` of ipvlan L3 slaves per host,
then address and link up). Timed from the first container to the moment the spine's kernel FIB holds every
expected route; then leaf1's FRR (zebra and bgpd) is killed and started again and timed from the kill until the
spine's FIB is whole again.

## Route count at the spine

With `advertise = "host"` every container address is a /32 in every router of the fabric:
**spine routes = N x M** (N hosts, M containers each; one path per prefix at the spine, since each host hangs off
one leaf, so paths = prefixes). `advertise = "both"` adds one aggregate per host network: **N x M + N**. With
`advertise = "aggregate"` and one network per host (rack): **spine routes = N**, independent of M; the
network is sized to the host's containers (here /`32 - ceil(log2(M + 2))`, a /24 for 250). A leaf holds the same
count as the spine (the other leaf's routes arrive through the spine). Each agent advertises only its own host's
M (or 1) prefixes, so an agent's cost grows with M, never with N.

## Measured

How to read the columns: *containers up* is the bench's own work of starting them (namespaces made in-process,
one `ip -batch` of slaves per host, then address and link up over netlink per container), which shares the 2
emulated CPUs with N agents, N gobgpd and three FRR routers; *after last container* is what the fabric adds
after the last container is up (agent, gobgpd, leaf, spine, the spine's zebra). With `advertise = "aggregate"`
(`aggregate_when = "used"`, the default) a host's aggregate goes out with its first ready container, so its FIB is
complete long before the last container: its figure is when every host's first container had its address, which the
bench sets only after it has made all N x M namespaces and slaves (not timed apart). Aggregation saves the
fabric, not the agent: an agent's CPU goes to discovering namespaces and endpoints, and was no lower with
aggregates (which is also why *containers up* grows faster than N x M: at 8 x 250 the agents took 8 x ~33 of the
2 x 231 CPU-seconds). *leaf1 restarted*: zebra and bgpd of leaf1 are killed (SIGKILL) and started again; the
spine drops leaf1's routes when the session closes, and takes them back once leaf1 has its
hosts' routes again. On the host kernel without containers, leaf1 was back with the spine after ~1 s but with its
hosts only after ~12 s: only gobgpd connects (it does not listen, `port = -1`), and after losing the leaf its
session (graceful restart on, connect-retry 1 s) took ~12 s to come back (gobgpd's log: peer down, peer up 12 s
later; why, not measured further), so at small sizes that wait is most of the figure.
"""

FOOTER = """## When to use host routes and when aggregates

Use `advertise = "aggregate"` when a network lives on one host (or one rack behind one leaf) and its addresses
never move: the spine and every leaf carry one route per host instead of one per container, so a leaf restart or a
burst of container starts re-propagates N prefixes instead of N x M. Use `"host"` (or `"both"`) when addresses
move between hosts, when the same network spans several hosts or racks, or for anycast service addresses: only
/32s let the fabric find a container wherever it runs, at the price of N x M routes in every router's RIB and FIB.
"""


# ---------------------------------------------------------------------------------------------------- main

def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOSTSxCONTAINERS (e.g. 8x250)")
    return int(match.group(1)), int(match.group(2))


async def run_all(sizes: list[tuple[int, int]], modes: list[str], leaf_restart: bool, path: Path) -> dict[str, Any]:
    """Every size in every mode, the JSON rewritten after each run (a later failure keeps the earlier figures)."""
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "kernel": platform.release(), "cpus": os.cpu_count(), **code_state(), "runs": []}
    for hosts, containers in sizes:
        for mode in modes:
            try:
                result["runs"].append(await run_fleet(Fleet(hosts, containers, mode), leaf_restart))
            except Exception as exc:  # the other sizes still run; the failure is in the JSON, not in the tables
                traceback.print_exc()
                result.setdefault("failed", []).append({"hosts": hosts, "containers_per_host": containers,
                                                        "advertise": mode, "error": f"{type(exc).__name__}: {exc}"})
            path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, action="append", default=None,
                        help="HOSTSxCONTAINERS, repeatable (default: 2x50 4x100 8x250)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--no-leaf-restart", action="store_true")
    parser.add_argument("--render", action="store_true", help="only render docs/fleet.md from docs/fleet/*.json")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default docs/fleet)")
    parser.add_argument("--here", action="store_true", help="run on this kernel (it must have ipvlan)")
    args = parser.parse_args()
    if args.render:
        print(render())
        return 0
    sizes = args.size or [(2, 50), (4, 100), (8, 250)]
    if not args.here and not Path("/sys/module/ipvlan").exists():
        from ipvlan_bgp_lab.vm import run_in_guest

        os.environ.setdefault("IBGP_VM_MEMORY", VM_MEMORY)
        outdir = Path(tempfile.mkdtemp(prefix="ibgp-fleet-"))
        argv = [sys.executable, str(Path(__file__).resolve()), "--here", "--out", str(outdir), *sys.argv[1:]]
        print(f"this kernel has no ipvlan: running in the VM (output in {outdir}, "
              f"{os.environ['IBGP_VM_MEMORY']} of memory)", flush=True)
        rc = run_in_guest(argv, outdir, timeout=7200)
        sys.stdout.write((outdir / "guest.log").read_text(errors="replace"))
        RESULTS.mkdir(parents=True, exist_ok=True)
        for produced in outdir.glob("fleet-*.json"):
            (RESULTS / produced.name).write_bytes(produced.read_bytes())
        if any(RESULTS.glob("fleet-*.json")):
            render()
        return rc
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fleet-{time.strftime('%Y%m%dT%H%M%S')}.json"
    result = asyncio.run(run_all(sizes, args.modes, not args.no_leaf_restart, path))
    print(f"results: {path}")
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
