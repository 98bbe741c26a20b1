"""Fault suite (issue #11, item 7): the agent under the bad days it must survive, each case measured against
a stated pass condition. Runs inside the VM where this kernel has no ipvlan (like agent_bench.py); the two fuzz
cases need no ipvlan and run on this machine, outside the VM, where they are ten times faster.

  gobgpd-kill    gobgpd SIGKILLed N times at random points under endpoint churn (embedded lab, FRR ToR)
  agent-kill     the agent SIGKILLed N times at random points, some right inside a pass (same lab)
  gobgpd-freeze  gobgpd SIGSTOPped, then resumed, with the agent under a real systemd watchdog interval
  burst          a burst of changes into a 64 KiB netlink receive buffer
  netns-cycle    namespaces created and deleted in a loop: fds, threads, tasks and RSS
  hostile        one container attacking: forged netlink, 50,000 addresses, stolen addresses, junk files
  parser-fuzz    random and mutated netlink bytes through the parser
  config-fuzz    generated config files through `ipvlan-bgp validate`

Writes docs/reliability/faults-<time>.json (every figure, the sizes and the git commit) and regenerates
docs/reliability.md from it; ``--render JSON`` only regenerates the page. Sizes default to the issue's; the
``--small`` preset is the smoke test's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import ipaddress
import itertools
import json
import os
import platform
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from agent_bench import RibWatch, summary  # noqa: E402
from ipvlan_bgp_lab.containers import IpBatch, ifindex, netlink_in, populate  # noqa: E402
from ipvlan_bgp_lab.gobgpd import Gobgpd, free_port, global_config  # noqa: E402
from ipvlan_bgp_lab.netns import create_netns, delete_netns, run_in  # noqa: E402

from agent.gobgp import GobgpClient  # noqa: E402
from agent.model import LargeCommunity  # noqa: E402
from agent.status import query  # noqa: E402

OWNER = LargeCommunity(65001, 4242, 1)  # the lab hosts' ownership community, and the testbeds'
DOCS = REPO / "docs"
RESULTS = DOCS / "reliability"
UNIT = REPO / "config" / "ipvlan-bgp-agent.service"
# netns-cycle before the lab cases: both use /run/netns, and the lab stays up from the first lab case to the end.
VM_CASES = ("burst", "netns-cycle", "gobgpd-freeze", "hostile", "gobgpd-kill", "agent-kill")
HOST_CASES = ("parser-fuzz", "config-fuzz")
CASES = (*VM_CASES, *HOST_CASES)

CONDITIONS = {
    "gobgpd-kill": "after the storm: 0 missing and 0 stale paths in gobgpd and at the ToR",
    "agent-kill": "0 ToR withdrawals of prefixes that stayed up the whole time; exact set afterwards",
    "gobgpd-freeze": "agent alive, watchdog pings never apart by more than WatchdogSec, status unhealthy while "
                     "gobgpd is frozen, exact set in gobgpd after it resumes",
    "burst": "gobgpd converges to the exact set",
    "netns-cycle": "open fds, threads and asyncio tasks back to their start values; RSS back within 10 % of its "
                   "start value",
    "hostile": "nothing the agent should not advertise reaches gobgpd; the other containers keep every route "
               "(no withdrawal) and their events keep arriving (p99 reported, attack vs none)",
    "parser-fuzz": "only the parser's one defined error type, on every input",
    "config-fuzz": "`validate` exits 0 or 2 on every file, never a traceback",
}

# The figures the summary table shows, per case (the detail sections show all of them).
HEADLINES = {
    "gobgpd-kill": ("kills", "changes", "gobgpd_missing", "gobgpd_stale", "tor_missing", "tor_stale",
                    "kill_to_full_rib_worst_s", "kill_to_full_rib_median_s"),
    "agent-kill": ("kills", "changes", "tor_fib_withdrawals_of_stable_prefixes", "gobgpd_missing", "gobgpd_stale",
                   "tor_missing", "tor_stale", "kill_to_in_sync_worst_s", "kill_to_in_sync_median_s"),
    "gobgpd-freeze": ("agent_alive_after", "worst_watchdog_gap_s", "first_unhealthy_after_freeze_s",
                      "status_unhealthy", "status_polls", "resume_to_exact_s", "missing", "stale"),
    "burst": ("missing", "stale", "converged_after_s", "netlink_resyncs"),
    "netns-cycle": ("start", "end", "rss_growth_after_first_cycle_mib"),
    "hostile": ("leaked", "attacker_prefixes_in_gobgpd", "victims_missing", "victim_withdrawals_during_attack",
                "victim_p99_ms_without_attack", "victim_p99_ms_under_attack", "agent_alive", "flood_applied_s",
                "agent_cpu_s"),
    "parser-fuzz": ("inputs", "defined_parse_errors", "other_exceptions"),
    "config-fuzz": ("files", "exit_0", "exit_2", "tracebacks_or_other_exits", "slowest_validate_ms"),
}
DOC_ORDER = ("gobgpd-kill", "agent-kill", "gobgpd-freeze", "burst", "netns-cycle", "hostile", "parser-fuzz",
             "config-fuzz")

SMALL = {"kills": 2, "churn_rate": 20, "freeze_seconds": 4.0, "watchdog_sec": 2.0, "burst": 300,
         "namespaces": 10, "netns_batch": 5, "hostile_addresses": 300, "latency_samples": 5,
         "fuzz_inputs": 2000, "config_files": 20}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def unit_watchdog_sec() -> float:
    for line in UNIT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "WatchdogSec":
            return float(value.strip().rstrip("s"))
    raise RuntimeError(f"{UNIT} sets no WatchdogSec")


async def poll(check: Callable[[], Coroutine[Any, Any, bool]], timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``check()`` is true; raises TimeoutError after ``timeout``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not true after {timeout:.0f} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


async def owned_prefixes(client: GobgpClient) -> set[str]:
    return {str(r.prefix) for r in await client.list_owned_paths(4)}


# ----------------------------------------------------------------------------------------------------------------
# The agent as its own process, watched from outside: /proc, the status socket, the systemd notify socket.

class NotifyListener:
    """The systemd side of sd_notify: a datagram socket that timestamps every message the agent sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path.unlink(missing_ok=True)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode(errors="replace")))

    def pings(self) -> list[float]:
        return [t for t, m in self.messages if "WATCHDOG=1" in m.splitlines()]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        self.path.unlink(missing_ok=True)


@dataclass
class AgentProcess:
    """`python -m agent.cli run CONFIG`, optionally with a smaller container netlink receive buffer and the
    environment systemd would give it."""

    workdir: Path
    config: dict[str, Any]
    rcvbuf: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def status_socket(self) -> Path:
        return self.workdir / "agent.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def start(self) -> AgentProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "agent.toml"
        listen = f"127.0.0.1:{self.metrics_port}" if self.metrics_port else ""
        path.write_text(to_toml({**_drop_unknown(self.config), "status": {"socket": str(self.status_socket)},
                                 "metrics": {"listen": listen}}))
        if self.rcvbuf is None:
            argv = [sys.executable, "-m", "agent.cli", "run", str(path)]
        else:  # the buffer is no config field: patch the default the daemon's Discovery is built with
            argv = [sys.executable, "-c", "import sys, agent.discovery as d\n"
                    f"d.Discovery.__init__.__kwdefaults__['container_rcvbuf'] = {self.rcvbuf}\n"
                    "from agent.cli import main\nsys.exit(main(sys.argv[1:]))", "run", str(path)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, **self.env})
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def status(self, timeout: float = 10.0) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = await query(self.status_socket, "status", timeout)
            return answer
        except (OSError, TimeoutError, ValueError):
            return None

    async def wait_healthy(self, timeout: float = 300.0) -> float:
        async def healthy() -> bool:
            if not self.alive():
                raise RuntimeError(f"the agent exited: {self.log_tail()}")
            status = await self.status()
            return bool(status and status.get("healthy"))
        return await poll(healthy, timeout, 0.1)

    async def metric(self, name: str) -> dict[str, float]:
        """One metric family from the agent's Prometheus endpoint: {"label=value,...": value}."""
        from prometheus_client.parser import text_string_to_metric_families

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
                text: str = reply.read().decode()
                return text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(await asyncio.to_thread(scrape)):
            for sample in family.samples:
                if sample.name in (name, f"{name}_total"):
                    out[",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))] = sample.value
        return out

    def resources(self) -> dict[str, float]:
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                fields[key] = int(value.split()[0])
        return {"fds": len(os.listdir(f"/proc/{self.pid}/fd")), "threads": fields["Threads"],
                "rss_mib": fields["VmRSS"] / 1024}

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def to_toml(data: dict[str, Any]) -> str:
    """The few shapes our configs use: scalars and lists at the top, tables of scalars, arrays of tables."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))
    top = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict) and not _tables(v)]
    tables = [f"\n[{k}]\n" + "".join(f"{kk} = {value(vv)}\n" for kk, vv in v.items())
              for k, v in data.items() if isinstance(v, dict)]
    arrays = [f"\n[[{k}]]\n" + "".join(f"{kk} = {value(vv)}\n" for kk, vv in item.items())
              for k, v in data.items() if _tables(v) for item in v]
    return "\n".join(top) + "\n" + "".join(tables) + "".join(arrays)


def _tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


@contextlib.asynccontextmanager
async def testbed(name: str) -> AsyncIterator[tuple[Gobgpd, Any, str, Path]]:
    """A gobgpd, a dummy uplink and a directory of container namespaces (as agent_bench's, but a fresh
    directory per case so the cases cannot see each other)."""
    run_in(None, "ip", "link", "set", "lo", "up")
    base = Path(tempfile.mkdtemp(prefix=f"faults-{name}-", dir=os.environ.get("IBGP_GUEST_TMP")))
    netns_dir = base / "netns"
    netns_dir.mkdir(parents=True)
    host = await netlink_in(None)
    uplink = f"up{name[:6]}{os.getpid() % 1000}"
    await host.link("add", ifname=uplink, kind="dummy")
    await host.link("set", index=await ifindex(host, uplink), state="up")
    daemon = Gobgpd(global_config(65001, "10.255.0.1"), base / "gobgpd").start()
    try:
        yield daemon, host, uplink, netns_dir
    finally:
        if daemon.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                daemon.proc.send_signal(signal.SIGCONT)
        daemon.stop()
        for ns in netns_dir.iterdir():
            if ns.is_symlink() or not (ns.is_file() or ns.is_dir()):
                ns.unlink()
            elif ns.is_dir():
                shutil.rmtree(ns, ignore_errors=True)
            else:
                delete_netns(ns)
        await host.link("del", index=await ifindex(host, uplink))
        host.close()


def base_config(target: str, uplink: str, netns_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"uplinks": [uplink], "ownership_community": str(OWNER), "netns_dirs": [str(netns_dir)],
            "max_prefixes": 200_000, "max_prefixes_per_namespace": 200_000, "gobgp": {"target": target},
            "timers": {"full_reconcile": 3600.0},
            "networks": [{"prefix": "10.0.0.0/8", "advertise": "host"}], **extra}


# ----------------------------------------------------------------------------------------------------------------
# The embedded lab (FRR ToR, two hosts) for the cases judged at the ToR.

LAB_HOST = "host1"
LAB_HOST_ADDRESS = "192.0.2.1"  # host1's address on the ToR link: the next hop of its routes at the ToR
LAB_STATUS = Path("/run/ipvlan-bgp/host1.sock")
CHURN_POOL = [f"10.1.100.{i}" for i in range(64, 251)]  # on h1c1, in host1's "web1" network (host + aggregate)
STABLE_EXTRA = [f"10.3.0.{i}" for i in range(100, 200)]  # on h1c3: never touched while the faults run


class Churn:
    """Endpoint changes at a fixed rate in one namespace: addresses toggled in a pool, through `ip -batch`."""

    def __init__(self, netns: Path, device: str, pool: list[str], rate: float) -> None:
        self.netns = netns
        self.ip = IpBatch(netns)
        self.device, self.pool, self.rate = device, pool, rate
        self.present: set[str] = set()
        self.changes = 0
        self.task: asyncio.Task[None] | None = None
        self._rng = random.Random(11)

    def burst(self, n: int) -> None:
        self.ip.send(*(self._change() for _ in range(n)))

    def _change(self) -> str:
        address = self._rng.choice(self.pool)
        verb = "del" if address in self.present else "add"
        (self.present.discard if verb == "del" else self.present.add)(address)
        self.changes += 1
        return f"address {verb} {address}/32 dev {self.device}"

    async def _run(self) -> None:
        started, sent = time.monotonic(), 0
        while True:
            due = int((time.monotonic() - started) * self.rate)
            if due > sent:
                self.ip.send(*(self._change() for _ in range(due - sent)))
                sent = due
            await asyncio.sleep(0.01)

    def start(self) -> Churn:
        self.task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.ip.close()

    def clear(self) -> None:
        """Remove what the churn left, so the next case starts from the lab's own set."""
        with IpBatch(self.netns) as ip:
            ip.send(*(f"address del {a}/32 dev {self.device}" for a in sorted(self.present)))
        self.present.clear()


@contextlib.asynccontextmanager
async def rack() -> AsyncIterator[Any]:
    from ipvlan_bgp_lab.demo import DEFAULT_TOPOLOGY, wait_for_routes
    from ipvlan_bgp_lab.embedded import NETNS_DIR, EmbeddedLab
    from ipvlan_bgp_lab.status import containers, host_prefix
    from ipvlan_bgp_lab.topology import load_topology

    lab = EmbeddedLab(load_topology(DEFAULT_TOPOLOGY))
    lab.down()
    lab.up(progress=lambda line: None)
    try:
        wait_for_routes(lab, "tor", {host_prefix(c.address) for c in containers(lab)}, timeout=300)
        batch = IpBatch(NETNS_DIR / "h1c3")
        batch.send(*(f"address add {a}/32 dev h1c3" for a in STABLE_EXTRA))
        batch.close()
        wait_for_routes(lab, "tor", {f"{a}/32" for a in STABLE_EXTRA}, timeout=300)
        yield lab
    finally:
        lab.down()


def lab_wanted(churn: Churn) -> set[str]:
    """What host1 should advertise: its containers, the stable extras, the churn pool's present addresses, and
    the web1 aggregate (advertise = both, used while any endpoint is in it: h1c1's own address always is)."""
    return ({"10.1.100.11/32", "10.1.100.12/32", "10.3.0.11/32", "10.1.100.0/24"}
            | {f"{a}/32" for a in STABLE_EXTRA} | {f"{a}/32" for a in churn.present})


def tor_from_host(fib: Any) -> set[str]:
    return {prefix for prefix, hops in fib.routes.items() if LAB_HOST_ADDRESS in hops}


async def owned_now(target: str) -> set[str] | None:
    """What gobgpd holds of ours, on a fresh channel (a channel to a killed gobgpd may be in reconnect backoff,
    which would add its own delay to the figure); None while it does not answer."""
    try:
        async with GobgpClient(target, OWNER, rpc_timeout=5) as client:
            return await owned_prefixes(client)
    except Exception:
        return None


async def settle_exact(target: str, fib: Any, wanted: set[str], timeout: float) -> dict[str, Any]:
    """Wait for gobgpd and the ToR FIB to hold exactly ``wanted``; report what they hold then."""
    held: set[str] = set()

    async def exact() -> bool:
        nonlocal held
        held = await owned_now(target) or set()
        return held == wanted and tor_from_host(fib) == wanted
    try:
        took: float | None = await poll(exact, timeout, 0.2)
    except TimeoutError:
        took = None
    tor = tor_from_host(fib)
    return {"settle_s": took, "wanted": len(wanted), "gobgpd_missing": sorted(wanted - held),
            "gobgpd_stale": sorted(held - wanted), "tor_missing": sorted(wanted - tor),
            "tor_stale": sorted(tor - wanted)}


async def case_gobgpd_kill(lab: Any, kills: int, rate: float, seed: int) -> dict[str, Any]:
    from ipvlan_bgp_lab.embedded import NETNS_DIR
    from ipvlan_bgp_lab.fibwatch import FibWatch

    rng = random.Random(seed)
    fib = await FibWatch(NETNS_DIR / lab.state.node_ns("tor")).start()
    stable = {f"{a}/32" for a in STABLE_EXTRA} | {"10.1.100.12/32", "10.3.0.11/32"}
    churn = Churn(NETNS_DIR / "h1c1", "h1c1", CHURN_POOL, rate).start()
    started = time.monotonic()
    to_full: list[float] = []
    target = lab.gobgp_api(LAB_HOST)

    async def full() -> bool:
        return stable <= (await owned_now(target) or set())
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.5, 4.0))
        killed = time.monotonic()
        lab.restart(f"{LAB_HOST}/gobgpd", signal.SIGKILL)
        await poll(full, 300, 0.1)
        to_full.append(time.monotonic() - killed)
    await churn.stop()
    storm = time.monotonic() - started
    final = await settle_exact(target, fib, lab_wanted(churn), 300)
    withdrawn = fib.withdrawals(stable, since=started)
    await fib.stop()
    churn.clear()
    ok = not (final["gobgpd_missing"] or final["gobgpd_stale"] or final["tor_missing"] or final["tor_stale"])
    return {"passed": ok, "sizes": {"kills": kills, "churn_rate_per_s": rate, "seed": seed},
            "figures": {"kills": len(to_full), "storm_s": storm, "changes": churn.changes,
                        "kill_to_full_rib_worst_s": max(to_full), "kill_to_full_rib_median_s": sorted(to_full)[
                            len(to_full) // 2], "kill_to_full_rib_s": to_full, **final,
                        "tor_fib_withdrawals_of_stable_prefixes": len(withdrawn)},
            "notes": "full RIB: every prefix that stayed up (the stable ones) back in gobgpd's table, timed from "
                     "the SIGKILL (gobgpd is restarted at once, as systemd's Restart= would). The ToR keeps "
                     "routes through gobgpd's restarts by graceful restart (lab config), so its FIB withdrawals "
                     "of stable prefixes are shown for information."}


async def case_agent_kill(lab: Any, kills: int, rate: float, seed: int) -> dict[str, Any]:
    from ipvlan_bgp_lab.embedded import NETNS_DIR
    from ipvlan_bgp_lab.fibwatch import FibWatch

    rng = random.Random(seed)
    fib = await FibWatch(NETNS_DIR / lab.state.node_ns("tor")).start()
    stable = {f"{a}/32" for a in STABLE_EXTRA} | {"10.1.100.11/32", "10.1.100.12/32", "10.3.0.11/32",
                                                  "10.1.100.0/24"}
    churn = Churn(NETNS_DIR / "h1c1", "h1c1", CHURN_POOL, rate).start()
    started = time.monotonic()
    to_sync: list[float] = []
    kinds: list[str] = []

    async def healthy() -> bool:
        try:
            status = await query(LAB_STATUS, "status", 5)
        except (OSError, TimeoutError, ValueError):
            return False
        return bool(status.get("healthy"))
    await poll(healthy, 300, 0.1)
    for i in range(kills):
        await asyncio.sleep(rng.uniform(0.5, 4.0))
        if i % 2:  # right after a burst: the agent is then almost surely inside a pass, mid-apply
            churn.burst(100)
            await asyncio.sleep(rng.uniform(0.0, 0.1))
            kinds.append("after a 100-change burst")
        else:
            kinds.append("random")
        killed = time.monotonic()
        LAB_STATUS.unlink(missing_ok=True)  # so that "healthy" can only come from the new agent
        lab.restart(f"{LAB_HOST}/agent", signal.SIGKILL)
        await poll(healthy, 300, 0.1)
        to_sync.append(time.monotonic() - killed)
    await churn.stop()
    storm = time.monotonic() - started
    final = await settle_exact(lab.gobgp_api(LAB_HOST), fib, lab_wanted(churn), 300)
    withdrawn = fib.withdrawals(stable, since=started)
    await fib.stop()
    churn.clear()
    exact = not (final["gobgpd_missing"] or final["gobgpd_stale"] or final["tor_missing"] or final["tor_stale"])
    return {"passed": exact and not withdrawn, "sizes": {"kills": kills, "churn_rate_per_s": rate, "seed": seed},
            "figures": {"kills": len(to_sync), "storm_s": storm, "changes": churn.changes,
                        "tor_fib_withdrawals_of_stable_prefixes": len(withdrawn),
                        "withdrawn": sorted({e.prefix for e in withdrawn}),
                        "kill_to_in_sync_worst_s": max(to_sync),
                        "kill_to_in_sync_median_s": sorted(to_sync)[len(to_sync) // 2],
                        "kill_to_in_sync_s": to_sync, "kill_points": kinds, **final},
            "notes": "in sync: the new agent's status socket says healthy (its first full pass is done), timed "
                     "from the SIGKILL, including the interpreter's start in the VM."}


async def case_gobgpd_freeze(seconds: float, watchdog_sec: float, endpoints: int = 50,
                             rpc_timeout: float | None = None) -> dict[str, Any]:
    """``rpc_timeout``: None keeps the agent's default (the smoke test shortens it to fit a short freeze)."""
    async with testbed("freeze") as (gobgpd, _host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, OWNER) as client:
        await client.connect()
        (ns,) = populate(uplink, netns_dir, [f"10.6.0.{i + 1}/16" for i in range(endpoints)], endpoints)
        listener = NotifyListener(netns_dir.parent / "notify.sock")
        config = base_config(gobgpd.target, uplink, netns_dir)
        if rpc_timeout is not None:
            config["gobgp"]["rpc_timeout"] = rpc_timeout
        agent = AgentProcess(netns_dir.parent / "agent", config,
                             env={"NOTIFY_SOCKET": str(listener.path),
                                  "WATCHDOG_USEC": str(int(watchdog_sec * 1e6))}).start()
        assert gobgpd.proc is not None
        try:
            ready = await agent.wait_healthy()
            churn = Churn(ns, "e0", [f"10.7.0.{i}" for i in range(1, 200)], 2.0).start()
            await asyncio.sleep(2 * watchdog_sec)
            frozen_at = time.monotonic()
            gobgpd.proc.send_signal(signal.SIGSTOP)
            observed: list[tuple[float, bool | None]] = []
            status_failures = 0
            while time.monotonic() - frozen_at < seconds:
                status = await agent.status(timeout=5)
                if status is None:
                    status_failures += 1
                observed.append((time.monotonic() - frozen_at, None if status is None else bool(status["healthy"])))
                await asyncio.sleep(1.0)
            gobgpd.proc.send_signal(signal.SIGCONT)
            resumed_at = time.monotonic()
            await churn.stop()
            wanted = {f"10.6.0.{i + 1}/32" for i in range(endpoints)} | {f"{a}/32" for a in churn.present}
            held: set[str] = set()

            async def exact() -> bool:
                nonlocal held
                held = await owned_prefixes(client)
                return held == wanted and bool((await agent.status() or {}).get("healthy"))
            try:
                converge: float | None = await poll(exact, 120, 0.2)
            except TimeoutError:
                converge = None
            alive = agent.alive()
        finally:
            agent.stop()
            listener.close()
        pings = [t for t in listener.pings() if t >= frozen_at - watchdog_sec]
        marks = sorted([frozen_at - watchdog_sec, *pings, resumed_at + (converge or 0)])
        worst_gap = max(b - a for a, b in itertools.pairwise(marks))
        unhealthy = [t for t, h in observed if h is False]
        statuses = [m for _, m in listener.messages if m.startswith("STATUS=") or "\nSTATUS=" in m]
    ok = (alive and worst_gap < watchdog_sec and bool(unhealthy) and converge is not None)
    return {"passed": ok, "sizes": {"freeze_s": seconds, "watchdog_sec": watchdog_sec, "endpoints": endpoints,
                                    "rpc_timeout": rpc_timeout or "default",
                                    "changes_per_s_meanwhile": 2.0},
            "figures": {"agent_alive_after": alive, "ready_s": ready, "watchdog_pings": len(pings),
                        "worst_watchdog_gap_s": worst_gap,
                        "first_unhealthy_after_freeze_s": unhealthy[0] if unhealthy else None,
                        "status_polls": len(observed), "status_unhealthy": len(unhealthy),
                        "status_unanswered": status_failures, "resume_to_exact_s": converge,
                        "missing": sorted(wanted - held), "stale": sorted(held - wanted),
                        "systemd_status_messages": statuses[-5:]},
            "notes": "WatchdogSec from the shipped unit; the agent gets NOTIFY_SOCKET and WATCHDOG_USEC as under "
                     "systemd, and the harness reads the datagrams. A gap is measured between consecutive "
                     "WATCHDOG=1 from one WatchdogSec before the freeze until convergence."}


async def case_burst(changes: int, rcvbuf: int = 64 * 1024, endpoints: int = 20) -> dict[str, Any]:
    async with testbed("burst") as (gobgpd, _host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, OWNER) as client:
        await client.connect()
        (ns,) = populate(uplink, netns_dir, [f"10.8.0.{i + 1}/16" for i in range(endpoints)], endpoints)
        agent = AgentProcess(netns_dir.parent / "agent", base_config(gobgpd.target, uplink, netns_dir),
                             rcvbuf=rcvbuf).start()
        try:
            await agent.wait_healthy()
            rng = random.Random(7)
            pool = [str(ipaddress.ip_address("10.9.0.0") + i) for i in range(max(changes // 2, 1))]
            device: dict[str, str] = {}  # present address -> the endpoint holding it (a delete must name it)
            lines = []
            for _ in range(changes):
                address = rng.choice(pool)
                if address in device:
                    lines.append(f"address del {address}/32 dev {device.pop(address)}")
                else:
                    device[address] = f"e{rng.randrange(endpoints)}"
                    lines.append(f"address add {address}/32 dev {device[address]}")
            present = set(device)
            wanted = {f"10.8.0.{i + 1}/32" for i in range(endpoints)} | {f"{a}/32" for a in present}
            started = time.monotonic()
            with IpBatch(ns) as ip:
                ip.send(*lines)
            written = time.monotonic() - started
            held: set[str] = set()

            async def exact() -> bool:
                nonlocal held
                if await client.path_count(4) != len(wanted):
                    return False
                held = await owned_prefixes(client)
                return held == wanted
            try:
                converge: float | None = await poll(exact, 600, 0.2)
            except TimeoutError:
                converge = None
                held = await owned_prefixes(client)
            status = await agent.status() or {}
        finally:
            agent.stop()
    return {"passed": converge is not None and held == wanted,
            "sizes": {"changes": changes, "rcvbuf_bytes": rcvbuf, "endpoints": endpoints},
            "figures": {"burst_written_s": written, "converged_after_s": converge, "wanted": len(wanted),
                        "missing": len(wanted - held), "stale": len(held - wanted),
                        "netlink_resyncs": status.get("netlink_resyncs")},
            "notes": "the buffer is set on the agent's container sockets (SO_RCVBUFFORCE; the kernel doubles it); "
                     "netlink_resyncs > 0 shows the burst overflowed it (ENOBUFS) and was recovered by a re-dump."}


async def snapshot(agent: AgentProcess) -> dict[str, Any]:
    tasks = (await agent.status() or {}).get("tasks")
    return {**agent.resources(), "tasks": tasks}


IP_NETNS_DIR = Path("/run/netns")  # where `ip netns add` puts them (fixed in iproute2)


async def make_namespaces(uplink: str, names: list[str], addresses: list[str]) -> None:
    """Namespaces with one addressed ipvlan endpoint each, as cheaply as the emulated VM allows: two `ip -batch`
    processes for all of them, then the addresses in-process (a process per namespace costs ~0.2 s there)."""
    _ip_batch([f"netns add {n}" for n in names])
    _ip_batch([f"link add link {uplink} name e0 netns {n} type ipvlan mode l3" for n in names])
    for name, address in zip(names, addresses, strict=True):
        ipr = await netlink_in(IP_NETNS_DIR / name)
        try:
            index = await ifindex(ipr, "e0")
            iface = ipaddress.ip_interface(address)
            await ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            await ipr.link("set", index=index, state="up")
        finally:
            ipr.close()


def _ip_batch(lines: list[str]) -> None:
    out = subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ip -batch failed: {out.stderr.strip()[:2000]}")


async def case_netns_cycle(total: int, batch: int) -> dict[str, Any]:
    """Runs with the agent watching /run/netns (where `ip netns` works): before the lab cases, which use it."""
    IP_NETNS_DIR.mkdir(parents=True, exist_ok=True)
    prefix = f"cyc{os.getpid() % 10000}-"
    async with testbed("cycle") as (gobgpd, _host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, OWNER) as client:
        await client.connect()
        agent = AgentProcess(netns_dir.parent / "agent", base_config(gobgpd.target, uplink, IP_NETNS_DIR)).start()
        try:
            await agent.wait_healthy()
            start = await snapshot(agent)
            own = (await agent.status() or {}).get("namespaces")  # the agent's own namespace counts as one
            after_first = start
            cycles = max(total // batch, 1)
            started = time.monotonic()
            for cycle in range(cycles):
                names = [f"{prefix}{cycle}-{i}" for i in range(batch)]
                addresses = [f"10.10.{i // 250}.{i % 250 + 1}/16" for i in range(batch)]
                await make_namespaces(uplink, names, addresses)
                wanted = {a.replace("/16", "/32") for a in addresses}

                async def present(wanted: set[str] = wanted) -> bool:
                    return wanted <= await owned_prefixes(client)
                await poll(present, 300, 0.2)
                _ip_batch([f"netns del {n}" for n in names])

                async def gone(wanted: set[str] = wanted) -> bool:
                    return not wanted & await owned_prefixes(client)
                await poll(gone, 300, 0.2)
                if cycle == 0:
                    after_first = await snapshot(agent)
            looped = time.monotonic() - started

            async def no_namespaces() -> bool:
                return (await agent.status() or {}).get("namespaces") == own
            await poll(no_namespaces, 120, 0.2)
            await asyncio.sleep(2)  # let closed watchers' sockets and threads go
            end = await snapshot(agent)
        finally:
            agent.stop()
            leftovers = [n.name for n in IP_NETNS_DIR.iterdir() if n.name.startswith(prefix)]
            if leftovers:
                _ip_batch([f"netns del {n}" for n in leftovers])
    ok = (end["fds"] == start["fds"] and end["threads"] == start["threads"] and end["tasks"] == start["tasks"]
          and end["rss_mib"] <= start["rss_mib"] * 1.10)
    return {"passed": ok, "sizes": {"namespaces": cycles * batch, "per_cycle": batch, "cycles": cycles},
            "figures": {"start": start, "after_first_cycle": after_first, "end": end, "loop_s": looped,
                        "rss_growth_after_first_cycle_mib": end["rss_mib"] - after_first["rss_mib"]},
            "notes": "each namespace holds one ipvlan endpoint with an address; a cycle creates a batch, waits for "
                     "their /32s in gobgpd, deletes them (`ip netns del`) and waits for the withdrawals. tasks: "
                     "the agent's asyncio tasks from its status socket (null when that version does not report "
                     "them)."}


# --- hostile container ---------------------------------------------------------------------------------------

NLMSG = struct.Struct("=IHHII")
IFINFO = struct.Struct("=BxHiII")
IFADDR = struct.Struct("=BBBBI")


def _rta(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def forged_messages(uplink_index: int, host_nsid: int, address: str, ifindex_: int = 4242) -> list[bytes]:
    """An RTM_NEWLINK for an ipvlan L3 slave of the host's uplink, then its RTM_NEWADDR: what the kernel would
    send for a real one, sent by a process instead (port id != 0)."""
    info = _rta(1, b"ipvlan\0") + _rta(2, _rta(1, struct.pack("=H", 1)))  # IFLA_INFO_KIND, IFLA_INFO_DATA(MODE=L3)
    link_body = (IFINFO.pack(socket.AF_UNSPEC, 1, ifindex_, 0x1 | 0x40 | 0x10000, 0) + _rta(3, b"forged0\0")
                 + _rta(5, struct.pack("=I", uplink_index)) + _rta(16, bytes([6]))
                 + _rta(18 | 0x8000, info) + _rta(37, struct.pack("=i", host_nsid)))
    raw = ipaddress.IPv4Address(address).packed
    addr_body = IFADDR.pack(socket.AF_INET, 32, 0x80, 0, ifindex_) + _rta(1, raw) + _rta(2, raw)
    return [NLMSG.pack(NLMSG.size + len(body), kind, 0, 0, 0) + body
            for kind, body in ((16, link_body), (20, addr_body))]


FORGE_SCRIPT = """
import socket, sys
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
sock.bind((0, 0))
for hex_ in sys.argv[1:]:
    msg = bytes.fromhex(hex_)
    group = 1 if int.from_bytes(msg[4:6], "little") == 16 else 0x10  # RTMGRP_LINK / RTMGRP_IPV4_IFADDR
    sock.sendto(msg, (0, group))
print("sent", len(sys.argv) - 1)
"""


async def victim_latency(ns: Path, watch: RibWatch, samples: int, base: str) -> list[float]:
    out = []
    with IpBatch(ns) as ip:
        for i in range(samples):
            address = str(ipaddress.ip_address(base) + i)
            mark = len(watch.seen)
            t0 = time.monotonic()
            ip.send(f"address add {address}/32 dev e0")
            out.append(await watch.wait(f"{address}/32", False, mark, timeout=300) - t0)
            mark = len(watch.seen)
            ip.send(f"address del {address}/32 dev e0")
            await watch.wait(f"{address}/32", True, mark, timeout=300)
            await asyncio.sleep(0.05)
    return out


async def case_hostile(addresses: int, latency_samples: int, victims: int = 20, quota: int = 100,
                       cap: int = 1000) -> dict[str, Any]:
    async with testbed("hostile") as (gobgpd, host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, OWNER) as client:
        await client.connect()
        host_address = "10.11.255.1"
        await host.addr("add", index=await ifindex(host, uplink), address=host_address, prefixlen=24)
        # The kernel refuses an address that another ipvlan slave of the same parent holds: a second uplink
        # (as on a host with two) is how two containers come to claim one address.
        uplink2 = f"{uplink[:11]}b"
        await host.link("add", ifname=uplink2, kind="dummy")
        await host.link("set", index=await ifindex(host, uplink2), state="up")
        try:
            return await _hostile(gobgpd, client, host, uplink, uplink2, netns_dir, host_address, addresses,
                                  latency_samples, victims, quota, cap)
        finally:
            await host.link("del", index=await ifindex(host, uplink2))


async def _hostile(gobgpd: Gobgpd, client: GobgpClient, host: Any, uplink: str, uplink2: str, netns_dir: Path,
                   host_address: str, addresses: int, latency_samples: int, victims: int, quota: int,
                   cap: int) -> dict[str, Any]:
    victim_ns = populate(uplink, netns_dir, [f"10.12.{i // 250}.{i % 250 + 1}/16" for i in range(victims)],
                         1, netns_prefix="victim")
    victim_prefixes = {f"10.12.{i // 250}.{i % 250 + 1}/32" for i in range(victims)}
    stolen = "10.12.0.2"  # the second victim's address, claimed again by the attacker
    (attacker,) = populate(uplink2, netns_dir, ["10.13.0.1/16"], 1, netns_prefix="attacker")
    config = base_config(gobgpd.target, uplink, netns_dir, uplinks=[uplink, uplink2], max_prefixes=cap,
                         max_prefixes_per_namespace=quota)
    agent = AgentProcess(netns_dir.parent / "agent", config, metrics_port=free_port()).start()
    watch = RibWatch(gobgpd.target)
    try:
        await agent.wait_healthy()
        await watch.start()
        baseline = await victim_latency(victim_ns[0], watch, latency_samples, "10.12.200.1")
        attack_from = len(watch.seen)

        # 1. forged netlink from a plain namespace with a veth to the host (so it has an id for ours)
        plain = create_netns(netns_dir / "plain")
        veth = f"vf{os.getpid() % 10000}"
        run_in(None, "ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        run_in(None, "ip", "link", "set", f"{veth}p", "netns", str(plain))  # gives our namespace an id in there
        host_nsid = _nsid_of(plain)
        forged = forged_messages(await ifindex(host, uplink), host_nsid, "10.14.0.1")
        forge = run_in(plain, sys.executable, "-c", FORGE_SCRIPT, *(m.hex() for m in forged), check=False)
        # 2. junk in the namespace directory
        os.mkfifo(netns_dir / "junk-fifo")
        (netns_dir / "junk-file").write_text("not a namespace\n")
        (netns_dir / "junk-link").symlink_to("/proc/self/ns/net")
        (netns_dir / "junk-dir").mkdir()
        # 3. the host's address, a victim's address, and a flood of its own, written from a thread while the
        # victims' latency is measured
        flood = [f"address add {ipaddress.ip_address('10.16.0.0') + i}/32 dev e0" for i in range(addresses)]
        with IpBatch(attacker) as ip:
            ip.send(f"address add {host_address}/32 dev e0", f"address add {stolen}/32 dev e0")
            attack_started = time.monotonic()
            writing = asyncio.create_task(asyncio.to_thread(ip.send, *flood))
            during = await victim_latency(victim_ns[0], watch, latency_samples, "10.12.210.1")
            await writing
        flood_applied = time.monotonic() - attack_started
        counts: list[int] = []

        async def settled() -> bool:  # the path count still for 3 s, and the agent healthy
            counts.append(await client.path_count(4))
            status = await agent.status()
            return bool(status and status.get("healthy")) and len(counts) > 6 and len(set(counts[-6:])) == 1
        await poll(settled, 900, 0.5)
        held = await owned_prefixes(client)
        withdrawn_victims = sorted({p for _, p, w in watch.seen[attack_from:] if w and p in victim_prefixes
                                    and p != f"{stolen}/32"})
        ever_added = {p for _, p, w in watch.seen[attack_from:] if not w}
        attacker_held = {p for p in held if p.startswith("10.16.") or p == "10.13.0.1/32"}
        status = await agent.status() or {}
        dropped = await agent.metric("ipvlan_bgp_netlink_dropped")
        cpu = _cpu_seconds(agent.pid)
        alive = agent.alive()
    finally:
        await watch.stop()
        agent.stop()
    forbidden = {"10.14.0.1/32": "forged netlink", f"{host_address}/32": "the host's own address",
                 f"{stolen}/32": "claimed by two containers"}
    # in gobgpd at the end, or at any moment of the attack (the stolen one was the victim's before it)
    leaked = {p: why for p, why in forbidden.items()
              if p in held or (p in ever_added and p != f"{stolen}/32")}
    victims_missing = sorted(victim_prefixes - {f"{stolen}/32"} - held)
    over_quota = max(len(attacker_held) - quota, 0)
    ok = alive and not leaked and not victims_missing and not withdrawn_victims and over_quota == 0
    return {"passed": ok, "sizes": {"flood_addresses": addresses, "victims": victims,
                                    "max_prefixes": cap, "max_prefixes_per_namespace": quota,
                                    "latency_samples": latency_samples},
            "figures": {"leaked": leaked, "attacker_prefixes_in_gobgpd": len(attacker_held),
                        "attacker_over_quota": over_quota, "victims_missing": victims_missing,
                        "victim_withdrawals_during_attack": withdrawn_victims,
                        "victim_p99_ms_without_attack": summary(baseline)["p99_ms"],
                        "victim_p99_ms_under_attack": summary(during)["p99_ms"],
                        "victim_latency_without_attack": summary(baseline),
                        "victim_latency_under_attack": summary(during),
                        "p99_ratio": summary(during)["p99_ms"] / summary(baseline)["p99_ms"],
                        "flood_applied_s": flood_applied, "forger": forge.stdout.strip() or forge.stderr.strip(),
                        "agent_alive": alive, "agent_cpu_s": cpu,
                        "netlink_dropped_metric": dropped, "netlink_dropped_status": status.get("netlink_dropped"),
                        "paths_in_gobgpd": len(held),
                        "status_after": {k: v for k, v in status.items() if k not in ("gobgpd", "prefixes")}},
            "notes": "the victims are one-endpoint namespaces on the first uplink, the attacker one on a second "
                     "uplink (the kernel refuses a duplicate address among slaves of one parent). Latency: a "
                     "victim's address added -> its path in gobgpd (WatchEvent), sampled before the attack and "
                     "while the flood is being applied. The stolen address is by policy advertised for neither "
                     "claimant, so its victim's /32 is not counted as missing."}


def _drop_unknown(config: dict[str, Any]) -> dict[str, Any]:
    """Keep a field only if this version of the agent knows it (the per-namespace quota is newer)."""
    from agent.config import AgentConfig

    return {k: v for k, v in config.items() if k in AgentConfig.model_fields}


def _nsid_of(netns: Path) -> int:
    """The id the namespace at ``netns`` gives ours (its only peer): ask from inside it."""
    out = run_in(netns, "ip", "-j", "netns", "list-id", check=False).stdout
    ids = [entry["nsid"] for entry in json.loads(out or "[]")]
    if not ids:
        raise RuntimeError(f"{netns} has no id for another namespace")
    return int(ids[0])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------------------------------
# Fuzz cases: the project's own fuzz scripts (tests/fuzz), run as they are.

def case_parser_fuzz(inputs: int, seed: int) -> dict[str, Any]:
    result = importlib.import_module("tests.fuzz.netlink").fuzz(inputs, seed)
    return {"passed": not result.crashes and result.inputs == inputs, "sizes": {"inputs": inputs, "seed": seed},
            "figures": {"inputs": result.inputs, "defined_parse_errors": result.parse_errors,
                        "other_exceptions": len(result.crashes), "seconds": result.seconds,
                        "first_crashes": [f"{data.hex()[:200]}: {trace.splitlines()[-1]}"
                                          for data, trace in result.crashes[:3]]},
            "notes": "tests/fuzz/netlink.py: random bytes and mutations of the captured kernel datagrams "
                     "(tests/fixtures/netlink) through every parsing path discovery uses."}


def case_config_fuzz(files: int, seed: int) -> dict[str, Any]:
    result = importlib.import_module("tests.fuzz.config").fuzz(files, seed)
    return {"passed": not result.crashes and result.files == files, "sizes": {"files": files, "seed": seed},
            "figures": {"files": result.files, "exit_0": result.valid, "exit_2": result.invalid,
                        "tracebacks_or_other_exits": len(result.crashes), "seconds": result.seconds,
                        "slowest_validate_ms": result.slowest * 1e3,
                        "first_crashes": [f"{data[:120]!r}: {trace.strip().splitlines()[-1]}"
                                          for data, trace in result.crashes[:3]]},
            "notes": "tests/fuzz/config.py: generated and mutated agent.toml files through `ipvlan-bgp validate` "
                     "(in process)."}


# ----------------------------------------------------------------------------------------------------------------

LAB_CASES = ("gobgpd-kill", "agent-kill")


async def run_case(name: str, args: argparse.Namespace, lab: Any) -> dict[str, Any]:
    if name == "gobgpd-kill":
        return await case_gobgpd_kill(lab, args.kills, args.churn_rate, args.seed)
    if name == "agent-kill":
        return await case_agent_kill(lab, args.kills, args.churn_rate, args.seed)
    if name == "gobgpd-freeze":
        return await case_gobgpd_freeze(args.freeze_seconds, args.watchdog_sec or unit_watchdog_sec())
    if name == "burst":
        return await case_burst(args.burst)
    if name == "netns-cycle":
        return await case_netns_cycle(args.namespaces, args.netns_batch)
    if name == "hostile":
        return await case_hostile(args.hostile_addresses, args.latency_samples)
    if name == "parser-fuzz":
        return case_parser_fuzz(args.fuzz_inputs, args.seed)
    if name == "config-fuzz":
        return case_config_fuzz(args.config_files, args.seed)
    raise ValueError(name)


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=REPO).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"


async def run_cases(names: list[str], args: argparse.Namespace, json_path: Path) -> dict[str, Any]:
    """Each case in turn; the JSON is rewritten after each, so a crash keeps what was measured."""
    result: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    result.setdefault("cases", {})
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            await _run_one(name, args, result, json_path, stack)
    return result


async def _run_one(name: str, args: argparse.Namespace, result: dict[str, Any], json_path: Path,
                   stack: contextlib.AsyncExitStack) -> None:
    """One case into ``result``; the lab cases share one lab, brought up by the first of them."""
    started = time.monotonic()
    print(f"[{name}] ...", flush=True)
    try:
        lab = None
        if name in LAB_CASES:
            lab = getattr(args, "_lab", None) or await stack.enter_async_context(rack())
            args._lab = lab
        case = await run_case(name, args, lab)
    except Exception as exc:  # a case that cannot finish has failed; the others still run
        case = {"passed": False, "error": f"{type(exc).__name__}: {exc}", "figures": {}, "sizes": {}}
    case = {"condition": CONDITIONS[name], **case, "seconds": time.monotonic() - started}
    result["cases"][name] = case
    print(f"[{name}] {'PASS' if case['passed'] else 'FAIL'} in {case['seconds']:.0f} s: "
          f"{json.dumps(case.get('figures'))[:1500]}{' ' + case['error'] if 'error' in case else ''}",
          flush=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# docs/reliability.md, generated from the JSON

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, list) and len(value) > 8:
        return f"{len(value)} items"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def render(result: dict[str, Any], json_name: str) -> str:
    cases = result.get("cases", {})
    lines = [
        "# Reliability: the fault suite",
        "",
        "Generated by `bench/faults.py` (`make faults`) from "
        f"[`{json_name}`](reliability/{json_name}); do not edit by hand.",
        "",
        f"Run {result.get('date', '?')} on commit `{result.get('commit', '?')}`, kernel "
        f"{result.get('kernel', '?')} ({result.get('where', '?')}), {result.get('cpus', '?')} CPUs; "
        f"whole run {result.get('seconds', 0):.0f} s.",
        "",
        "| case | pass condition | result | sizes | key figures |",
        "|---|---|---|---|---|",
    ]
    def ran_on(name: str) -> str:  # the last run that holds the case (a JSON may gather several runs)
        commits = [run.get("commit", "?") for run in result.get("runs", []) if name in run.get("cases", ())]
        return f", on `{commits[-1][:7]}`" if commits else ""

    for name in DOC_ORDER:
        if name not in cases:
            lines.append(f"| {name} | {CONDITIONS[name]} | not run | | |")
            continue
        case = cases[name]
        verdict = f"**{'PASS' if case.get('passed') else 'FAIL'}** ({case.get('seconds', 0):.0f} s{ran_on(name)})"
        figures = case.get("figures", {})
        key_text = "; ".join(f"{k} {_fmt(figures[k])}" for k in HEADLINES[name] if k in figures)
        if "error" in case:
            key_text = f"error: {case['error']}"
        lines.append(f"| {name} | {case.get('condition', CONDITIONS[name])} | {verdict} | "
                     f"{_fmt(case.get('sizes', {}))} | {key_text.replace('|', '/')} |")
    lines += ["", "## Cases in detail", ""]
    for name in DOC_ORDER:
        if name not in cases:
            continue
        case = cases[name]
        lines += [f"### {name}: {'PASS' if case.get('passed') else 'FAIL'} ({case.get('seconds', 0):.0f} s)", "",
                  f"Pass condition: {case.get('condition', CONDITIONS[name])}.", ""]
        if case.get("notes"):
            lines += [case["notes"], ""]
        if "error" in case:
            lines += [f"Error: `{case['error']}`", ""]
        lines += [f"- sizes: {_fmt(case.get('sizes', {}))}"]
        for key, value in case.get("figures", {}).items():
            lines.append(f"- {key}: {_fmt(value)}")
        lines.append("")
    if result.get("notes"):
        lines += ["## About this run", "", result["notes"], ""]
    lines += [
        "## How to run",
        "",
        "`make faults` runs every case at the issue's sizes (the VM cases inside the QEMU VM where this kernel has",
        "no ipvlan, the fuzz cases on this machine), writes `docs/reliability/faults-<time>.json` and regenerates",
        "this page; it exits non-zero when a case fails. `FAULTS_ARGS=\"--small\"` runs toy sizes (as",
        "`tests/vm/test_faults_smoke_vm.py` does in `make test`); `--only CASE ...` selects cases; each size has",
        "its own flag (`python bench/faults.py --help`); `--render JSON` regenerates this page from a JSON file.",
        "",
    ]
    return "\n".join(lines)


def publish(json_path: Path) -> Path:
    result = json.loads(json_path.read_text())
    doc = DOCS / "reliability.md"
    doc.write_text(render(result, json_path.name))
    return doc


# ----------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=CASES)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--churn-rate", type=float, default=200.0)
    parser.add_argument("--freeze-seconds", type=float, default=90.0)
    parser.add_argument("--watchdog-sec", type=float, default=None, help="default: the shipped unit's WatchdogSec")
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--netns-batch", type=int, default=50)
    parser.add_argument("--hostile-addresses", type=int, default=50_000)
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--fuzz-inputs", type=int, default=1_000_000)
    parser.add_argument("--config-files", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (default docs/reliability/...)")
    parser.add_argument("--no-docs", action="store_true", help="do not regenerate docs/reliability.md")
    parser.add_argument("--render", type=Path, default=None, help="only regenerate docs/reliability.md from JSON")
    parser.add_argument("--here", action="store_true", help="run the VM cases on this kernel (it must have ipvlan)")
    parser.add_argument("--note", default="", help="a sentence about this run for the page")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.render:
        print(publish(args.render))
        return 0
    if args.small:  # the small sizes become the defaults; sizes given explicitly still win
        parser.set_defaults(**SMALL)
        args = parser.parse_args(argv)
    names = sorted(args.only or CASES, key=CASES.index)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    json_path = args.out or RESULTS / f"faults-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    header = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git_commit(),
              "argv": sys.argv[1:], "cpus": os.cpu_count(), "notes": args.note}
    vm_names = [n for n in names if n in VM_CASES]
    host_names = [n for n in names if n in HOST_CASES]
    if not json_path.exists():
        json_path.write_text(json.dumps({**header, "cases": {}, "runs": []}, indent=2) + "\n")
    else:  # adding cases to an earlier run's file: say which run measured which case
        result = json.loads(json_path.read_text())
        result.setdefault("runs", []).append({**header, "cases": names})
        if header["commit"] != result.get("commit"):
            result["commit"] = f"{result.get('commit')} + {header['commit']}"
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    rc = 0
    if vm_names and not args.here and not Path("/sys/module/ipvlan").exists():
        from ipvlan_bgp_lab.vm import run_in_guest

        outdir = Path(tempfile.mkdtemp(prefix="ibgp-faults-"))
        guest_json = outdir / "faults.json"
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
        guest_argv = [sys.executable, str(Path(__file__).resolve()), *_strip(passthrough), "--here", "--no-docs",
                      "--out", str(guest_json), "--only", *vm_names]
        print(f"this kernel has no ipvlan: the VM cases run in the VM (output in {outdir})", flush=True)
        rc = run_in_guest(guest_argv, outdir, timeout=float(os.environ.get("IBGP_FAULTS_TIMEOUT", 7200)))
        sys.stdout.write((outdir / "guest.log").read_text(errors="replace"))
        result = json.loads(json_path.read_text())
        if guest_json.exists():
            guest = json.loads(guest_json.read_text())
            result["cases"].update(guest.get("cases", {}))
            result["kernel"] = guest.get("kernel")
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        where = "the VM cases in the VM (QEMU TCG, virtme-ng, 2 vCPUs)"
    else:
        asyncio.run(run_cases(vm_names, args, json_path))
        where = "this machine" if vm_names else "the fuzz cases on this machine"
    if host_names:
        asyncio.run(run_cases(host_names, args, json_path))
    result = json.loads(json_path.read_text())
    result.setdefault("kernel", platform.release())
    places = [p for p in (*str(result.get("where") or "").split("; "), where) if p]
    result.update({"where": "; ".join(dict.fromkeys(places)),
                   "seconds": result.get("seconds", 0.0) + time.monotonic() - started})
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_docs:
        print(f"wrote {publish(json_path)}")
    failed = [n for n, c in result["cases"].items() if not c.get("passed")]
    print(f"results: {json_path}; {len(result['cases']) - len(failed)} passed, failed: {', '.join(failed) or 'none'}")
    return rc or (1 if failed else 0)


def _strip(argv: list[str]) -> list[str]:
    """The caller's arguments minus the ones the guest gets its own values for."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip and not arg.startswith("--"):
            continue
        skip = arg in ("--only", "--out", "--note")
        if skip or arg in ("--no-docs", "--here") or arg.split("=")[0] in ("--out", "--note"):
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
