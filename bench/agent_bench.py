"""Agent benchmarks on real ipvlan (inside the VM where this kernel has none), each next to a baseline
measured in the same run, since these machines are shared and noisy: ratios are what we quote.

  latency  netlink change -> path in gobgpd's RIB (WatchEvent), alone and with N other endpoints present, in
           rounds; each agent sample is interleaved with a floor sample at the same observation point
           (AddPath -> WatchEvent, DeletePath -> WatchEvent, the bare round trips on the way)
  tor      netlink change -> route in the FRR ToR's kernel FIB, vs a path injected through the GoBGP API
  scale    N endpoints present at agent start -> all N paths in gobgpd (gobgpd's own count), vs bare
           AddPathStream of N; agent RSS
  churn    endpoint changes at a fixed rate, a fresh address per add -> each add's lag, every add accounted for,
           and exactness of gobgpd afterwards
  noisy    one namespace churning while another's event -> RIB latency is sampled, vs the same without the noise
  idle     agent CPU with 1,000 stable endpoints over a window that includes a full re-read of gobgpd

Writes bench/results/agent-<time>.json (with the commit that measured it) and a PNG; `bench/report.py` turns
the JSON into docs/benchmarks.md and README's table.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import cProfile
import io
import ipaddress
import itertools
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ipvlan_bgp_lab.containers import IpBatch, add_ipvlan, ifindex, netlink_in, populate  # noqa: E402
from ipvlan_bgp_lab.gobgpd import Gobgpd, global_config  # noqa: E402
from ipvlan_bgp_lab.netns import create_netns, delete_netns, run_in  # noqa: E402
from provenance import code_state  # noqa: E402

from agent.config import AgentConfig, parse_config  # noqa: E402
from agent.daemon import running  # noqa: E402
from agent.gobgp import GobgpClient  # noqa: E402
from agent.gobgpapi import attribute_pb2 as attr_pb  # noqa: E402
from agent.gobgpapi import gobgp_pb2 as api  # noqa: E402
from agent.model import Attributes, LargeCommunity, Route  # noqa: E402

OWNER = LargeCommunity(65001, 4242, 1)
FLOOR_OWNER = LargeCommunity(65001, 4242, 98)  # the floor's paths: not the agent's, so it leaves them alone
MARKER = Route(ipaddress.ip_network("10.250.255.1/32"), None,
               Attributes(large_communities=(LargeCommunity(65001, 4242, 99),)))
RESULTS = REPO / "bench" / "results"
SCENARIOS = ["latency", "tor", "scale", "churn", "noisy", "idle"]
# Between two changes: more than the agent's timers.settle (20 ms), so that no sample waits out a settle window
# left by the one before (the first change after a quiet period is handled at once).
GAP = 0.06


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "p50_ms": statistics.median(samples) * 1e3, "p99_ms": pct(samples, 0.99) * 1e3,
            "max_ms": max(samples) * 1e3}


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


class RibWatch:
    """gobgpd's best-path table changes, timestamped: (time, prefix, is_withdraw)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[tuple[float, str, bool]] = []
        self.attached = asyncio.Event()
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        nlri = attr_pb.IPAddressPrefix()
        async with GobgpClient(self.target, OWNER) as c:
            flt = api.WatchEventRequest.Table.Filter(type=api.WatchEventRequest.Table.Filter.BEST, init=True)
            async for reply in c._stub.WatchEvent(api.WatchEventRequest(table=api.WatchEventRequest.Table(
                    filters=[flt]))):
                now = time.monotonic()
                self.attached.set()
                for path in reply.table.paths:
                    # Only the prefix: under churn a full path_to_route per update made this watch fall
                    # seconds behind gobgpd, and every lag it timed included that backlog.
                    if path.nlri.Unpack(nlri):
                        self.seen.append((now, f"{nlri.prefix}/{nlri.prefix_len}", path.is_withdraw))
                self.changed.set()

    async def start(self) -> RibWatch:
        # A path of another owner (the agent leaves it alone): the initial table then proves the stream is up.
        async with GobgpClient(self.target, MARKER.attributes.large_communities[0]) as other:
            await other.add_paths([MARKER])
        self.task = asyncio.create_task(self.run())
        await asyncio.wait_for(self.attached.wait(), 60)
        return self

    async def wait(self, prefix: str, withdraw: bool, since: int, timeout: float = 60) -> float:
        """When ``prefix`` was added (withdrawn) in the RIB, looking at changes from index ``since`` on.
        Woken by the stream rather than polling: in the emulated VM a poll loop would steal the CPU it measures."""
        deadline = time.monotonic() + timeout
        while True:
            for t, p, w in self.seen[since:]:
                if p == prefix and w == withdraw:
                    return t
            since = len(self.seen)
            self.changed.clear()
            if self.task is not None and self.task.done():
                self.task.result()
                raise RuntimeError("the RIB watch ended")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{prefix} {'withdraw' if withdraw else 'add'} never reached the RIB")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def first_times(self, withdraw: bool) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        for at, prefix, withdrawn in self.seen:
            if withdrawn == withdraw:
                times.setdefault(prefix, []).append(at)
        return times

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def agent_config(target: str, uplink: str, netns_dir: Path, **extra: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "uplinks": [uplink], "ownership_community": str(OWNER), "netns_dirs": [str(netns_dir)],
        "gobgp": {"target": target}, "max_prefixes": 200_000, "max_prefixes_per_namespace": 200_000,
        "networks": [{"prefix": "10.0.0.0/8", "advertise": "host"}],
        "status": {"socket": str(netns_dir.parent / "agent.sock")}, "metrics": {"listen": ""},
        "timers": {"full_reconcile": 3600.0},
    }
    data.update(extra)
    return parse_config(data)


@asynccontextmanager
async def testbed(name: str) -> AsyncIterator[tuple[Gobgpd, Any, str, Path]]:
    run_in(None, "ip", "link", "set", "lo", "up")
    base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=os.environ.get("IBGP_GUEST_TMP")))
    netns_dir = base / "netns"
    netns_dir.mkdir()
    host = await netlink_in(None)
    uplink = f"up{name[:8]}"
    await host.link("add", ifname=uplink, kind="dummy")
    await host.link("set", index=await ifindex(host, uplink), state="up")
    daemon = Gobgpd(global_config(65001, "10.255.0.1"), base / "gobgpd").start()
    try:
        yield daemon, host, uplink, netns_dir
    finally:
        daemon.stop()
        for ns in netns_dir.iterdir():
            delete_netns(ns)
        await host.link("del", index=await ifindex(host, uplink))
        host.close()


async def wait_for_count(client: GobgpClient, count: int, proc: subprocess.Popen[bytes] | None = None,
                         timeout: float = 900) -> float:
    """Seconds until gobgpd's own IPv4 path count (GetTable) reaches ``count``."""
    t0 = time.monotonic()
    while (held := await client.path_count(4)) < count:
        if time.monotonic() - t0 > timeout or (proc is not None and proc.poll() is not None):
            raise RuntimeError(f"gobgpd holds {held} of {count} paths")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


Samples = dict[str, list[float]]
SAMPLE_KINDS = ("agent_add", "agent_del", "floor_add", "floor_del", "addpath_rtt", "deletepath_rtt")


async def sample_round(client: GobgpClient, watch: RibWatch, ip: IpBatch, count: int,
                       indices: Iterator[int], dev: str = "eth0") -> Samples:
    """``count`` interleaved samples: a floor add and delete through the API (AddPath -> WatchEvent,
    DeletePath -> WatchEvent, the calls' own round trips on the way), then the agent's: an address added by
    another program -> its /32 in the RIB, and deleted -> withdrawn. Every address is used once: the agent's
    are 10.1.1.0 + i (in the measured endpoint's 10.1.0.0/16), the floor's 10.250.0.0 + i."""
    out: Samples = {kind: [] for kind in SAMPLE_KINDS}
    attrs = Attributes(large_communities=(FLOOR_OWNER,))
    for _ in range(count):
        index = next(indices)
        floor = Route(ipaddress.ip_network(f"{ipaddress.ip_address('10.250.0.0') + index}/32"), None, attrs)
        for call, withdraw, rtt, rib in ((client.add_paths, False, "addpath_rtt", "floor_add"),
                                         (client.delete_paths, True, "deletepath_rtt", "floor_del")):
            mark = len(watch.seen)
            t0 = time.monotonic()
            await call([floor])
            out[rtt].append(time.monotonic() - t0)
            out[rib].append(await watch.wait(str(floor.prefix), withdraw, mark) - t0)
            await asyncio.sleep(GAP)
        address = str(ipaddress.ip_address("10.1.1.0") + index)
        for verb, withdraw, kind in (("add", False, "agent_add"), ("del", True, "agent_del")):
            mark = len(watch.seen)
            t0 = time.monotonic()
            ip.send(f"address {verb} {address}/16 dev {dev}")
            out[kind].append(await watch.wait(f"{address}/32", withdraw, mark) - t0)
            await asyncio.sleep(GAP)
    return out


def judge(rounds: list[Samples]) -> dict[str, Any]:
    """Summaries over every round, each round's p50/p99 spread, and the agent against the floor at the same
    observation point (p50 against p50, p99 against p99; per round, then the spread of those ratios)."""
    merged: Samples = {kind: [v for r in rounds for v in r[kind]] for kind in SAMPLE_KINDS}
    result: dict[str, Any] = {kind: summary(values) for kind, values in merged.items()}
    result["rounds"] = len(rounds)
    result["round_spread"] = {
        kind: {q: spread([pct(r[kind], level) * 1e3 for r in rounds]) for q, level in (("p50_ms", 0.5),
                                                                                         ("p99_ms", 0.99))}
        for kind in SAMPLE_KINDS}
    for agent, floor in (("agent_add", "floor_add"), ("agent_del", "floor_del")):
        for q, level in (("p50", 0.5), ("p99", 0.99)):
            per_round = [pct(r[agent], level) / pct(r[floor], level) for r in rounds]
            result[f"{agent}_{q}_vs_floor"] = spread(per_round)
            result[f"{agent}_{q}_vs_floor"]["all"] = pct(merged[agent], level) / pct(merged[floor], level)
    result["_samples"] = merged
    return result


async def bench_latency(events: int, rounds: int = 3, others: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """For each count of other endpoints (ascending; they are added between counts), a fresh agent process
    in sync with all of them, then ``rounds`` rounds of ``events`` interleaved samples."""
    result: dict[str, Any] = {"events_per_round": events, "rounds": rounds, "gap_s": GAP,
                              "note": "agent in its own process (`ipvlan-bgp run`), timers.rib_check and "
                                      "full_reconcile 3600 s (their cost is in the idle figure); floor paths "
                                      "carry another owner's community", "by_others": {}}
    indices = itertools.count()
    async with testbed("latency") as (gobgpd, host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, FLOOR_OWNER) as client:
        await client.connect()
        ns = create_netns(netns_dir / "measured")
        await add_ipvlan(host, uplink, ns, addresses=["10.1.0.2/16"])
        watch = await RibWatch(gobgpd.target).start()
        present = 0
        for size in sorted(set(others)):
            t0 = time.monotonic()
            populate(uplink, netns_dir, [f"{ipaddress.ip_address('10.64.0.0') + i}/10" for i in range(present, size)],
                     100, netns_prefix=f"o{present}-")
            created = time.monotonic() - t0
            present = size
            name = f"latency-{size}"
            with agent_process(gobgpd.target, uplink, netns_dir, name, rib_check=3600) as proc:
                started = await wait_for_count(client, size + 2, proc)  # + the measured endpoint and the marker
                await agent_in_sync(proc, netns_dir, name)
                samples = []
                with IpBatch(ns) as ip:  # the change comes from another program, as Docker's does
                    await sample_round(client, watch, ip, 1, indices)  # unrecorded: the first line waits for `ip`
                    for _ in range(rounds):
                        samples.append(await sample_round(client, watch, ip, events, indices))
            result["by_others"][str(size)] = {"others_created_s": created, "agent_exec_to_all_s": started,
                                              **judge(samples)}
        await watch.stop()
    return result


async def bench_scale(count: int, profile: bool = False) -> dict[str, Any]:
    per_ns = 100
    async with testbed("scale") as (gobgpd, _host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, OWNER) as client:
        await client.connect()
        attrs = Attributes(large_communities=(OWNER,))
        routes = [Route(ipaddress.ip_network(f"{ipaddress.ip_address('10.128.0.0') + i}/32"), None, attrs)
                  for i in range(count)]
        t0 = time.monotonic()
        await client.add_paths(routes)
        bare = time.monotonic() - t0
        await client.delete_paths(routes)
        created = time.monotonic()
        populate(uplink, netns_dir, [f"{ipaddress.ip_address('10.64.0.0') + i}/10" for i in range(count)], per_ns)
        created = time.monotonic() - created
        profiler = cProfile.Profile() if profile else None
        t0 = time.monotonic()
        if profiler:
            profiler.enable()
        config = agent_config(gobgpd.target, uplink, netns_dir, on_shutdown="withdraw")
        async with running(config, 600):
            to_full = time.monotonic() - t0
            if profiler:
                profiler.disable()
            held = await client.path_count(4)  # gobgpd's own count, not the agent's
        # Again as its own process (`ipvlan-bgp run`), for the agent's own memory and a start that includes
        # the interpreter and imports; done is when gobgpd's table holds every path.
        left = await client.path_count(4)
        assert left == 0, f"the in-process agent left {left} paths behind"
        with agent_process(gobgpd.target, uplink, netns_dir, "scale") as proc:
            exec_to_all = await wait_for_count(client, count, proc, 600)
            memory = _memory_kib(proc.pid)
            held_process = await client.path_count(4)
    extra = {"profile_top_cumulative": _top(profiler)} if profiler else {}
    return {**extra, "endpoints": count, "created_s": created, "bare_stream_s": bare, "agent_start_to_all_s": to_full,
            "paths_in_gobgpd": held, "paths_in_gobgpd_process": held_process, "ratio": to_full / bare,
            "process_exec_to_all_s": exec_to_all, "process_ratio": exec_to_all / bare,
            "rss_mb": memory["VmRSS"] / 1024, "peak_rss_mb": memory["VmHWM"] / 1024,
            "note": "ratio: agent started inside the benchmark's process (imports done); process_*: `ipvlan-bgp "
                    "run` from exec, including interpreter start and imports; RSS of that process; "
                    "paths_in_gobgpd: gobgpd's GetTable count once the agent reported in sync"}


@contextmanager
def agent_process(target: str, uplink: str, netns_dir: Path, name: str,
                  **timers: float) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m agent.cli run` on a TOML config like ``agent_config``'s; its log in ``<name>.log``."""
    config = netns_dir.parent / f"{name}.toml"
    timer_lines = "".join(f"{key} = {value}\n" for key, value in timers.items())
    config.write_text(
        f'uplinks = ["{uplink}"]\nownership_community = "{OWNER}"\nnetns_dirs = ["{netns_dir}"]\n'
        f'max_prefixes = 200000\nmax_prefixes_per_namespace = 200000\n'
        f'[gobgp]\ntarget = "{target}"\n[status]\nsocket = "{netns_dir.parent / name}.sock"\n'
        '[metrics]\nlisten = ""\n[[networks]]\nprefix = "10.0.0.0/8"\nadvertise = "host"\n'
        + (f"[timers]\n{timer_lines}" if timers else ""))
    with (netns_dir.parent / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)


async def agent_in_sync(proc: subprocess.Popen[bytes], netns_dir: Path, name: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while b"in sync with gobgpd" not in (netns_dir.parent / f"{name}.log").read_bytes():
        assert time.monotonic() < deadline and proc.poll() is None, f"agent {name} never got in sync"
        await asyncio.sleep(0.1)


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _top(profiler: cProfile.Profile, n: int = 25) -> list[str]:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(n)
    return [line for line in out.getvalue().splitlines() if line.strip()][-n:]


class PySpy:
    """py-spy sampling one process for a while, in the background (``--profile``)."""

    def __init__(self, process: subprocess.Popen[bytes], raw: Path) -> None:
        self.process, self.raw = process, raw

    def result(self) -> dict[str, Any]:
        """Wait for the recording to end; the leaf functions by share of samples."""
        self.process.wait()
        return {"py_spy_top_leaves": _py_spy_top(self.raw)} if self.raw.exists() else {}


def start_py_spy(pid: int, seconds: float, raw: Path, rate: int = 100) -> PySpy | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return None
    return PySpy(subprocess.Popen([spy, "record", "--nonblocking", "--format", "raw", "--rate", str(rate), "-o",
                                   str(raw), "-d", str(max(1, int(seconds))), "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), raw)


def _py_spy_top(raw: Path, n: int = 15) -> list[str]:
    """Leaf functions by share of samples, from py-spy's collapsed ("raw") output."""
    leaves: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        leaf = stack.split(";")[-1]
        leaves[leaf] = leaves.get(leaf, 0) + int(count)
    ranked = sorted(leaves.items(), key=lambda kv: -kv[1])[:n]
    return [f"{100 * c / total:5.1f}% {leaf}" for leaf, c in ranked] if total else []


class Churn:
    """Endpoint changes at a fixed rate through one `ip -batch`: even changes add a fresh address (never used
    before, so gobgpd's first add of that prefix can only be this write's), odd ones delete the oldest address
    present (the ``pool`` written before the agent started, then the churn's own adds, first in first out)."""

    def __init__(self, ns: Path, devs: list[str], pool: int, first: str) -> None:
        self.ns, self.devs = ns, devs
        self.fresh = (str(ipaddress.ip_address(first) + i) for i in itertools.count())
        self.present: collections.deque[str] = collections.deque(next(self.fresh) for _ in range(pool))
        with IpBatch(ns) as ip:
            ip.send(*(f"address add {a}/32 dev {devs[i % len(devs)]}" for i, a in enumerate(self.present)))
        self.dev_of = {a: devs[i % len(devs)] for i, a in enumerate(self.present)}
        self.adds: list[tuple[str, float]] = []  # (address, when its add was written)
        self.dels: list[tuple[str, float]] = []
        self.changes = 0
        self.started = 0.0  # when the paced changes began

    async def run(self, rate: int, seconds: float, watch: RibWatch) -> float:
        """Returns the achieved rate."""
        ip = IpBatch(self.ns)  # applies changes as fast as it reads them; we pace the lines
        # One add seen in the RIB before the clock starts: the first line waits for `ip` to start.
        warm = next(self.fresh)
        self.dev_of[warm] = self.devs[0]
        mark = len(watch.seen)
        ip.send(f"address add {warm}/32 dev {self.devs[0]}")
        self.present.append(warm)
        await watch.wait(f"{warm}/32", False, mark, 300)
        t0 = self.started = time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds:
            due = int((time.monotonic() - t0) * rate)
            lines = []
            now = time.monotonic()
            while n < due:
                if n % 2 == 0:
                    address = next(self.fresh)
                    self.dev_of[address] = self.devs[n // 2 % len(self.devs)]
                    lines.append(f"address add {address}/32 dev {self.dev_of[address]}")  # /32: no secondaries
                    self.present.append(address)
                    self.adds.append((address, now))
                else:
                    address = self.present.popleft()
                    lines.append(f"address del {address}/32 dev {self.dev_of[address]}")
                    self.dels.append((address, now))
                n += 1
            ip.send(*lines)
            await asyncio.sleep(0.01)  # the pacing tick
        elapsed = time.monotonic() - t0
        ip.close()
        self.changes += n
        return n / elapsed

    def account(self, watch: RibWatch) -> dict[str, Any]:
        """Every add written: its lag to its own prefix's first add in gobgpd's stream, or counted missing."""
        rib_adds, rib_dels = watch.first_times(False), watch.first_times(True)
        deleted_at = {a: at for a, at in self.dels}
        lags: list[tuple[float, float]] = []  # (when written, relative to t0; lag)
        missing_deleted, missing_present = 0, 0
        for address, at in self.adds:
            times = rib_adds.get(f"{address}/32", [])
            later = times[bisect.bisect_left(times, at):]
            if later:
                lags.append((at - self.started, later[0] - at))
            elif address in deleted_at:
                missing_deleted += 1
            else:
                missing_present += 1
        withdraw_lags, withdraw_missing = [], 0
        for address, at in self.dels:
            prefix = f"{address}/32"
            if not rib_adds.get(prefix):
                continue  # never advertised: nothing to withdraw
            times = rib_dels.get(prefix, [])
            later = times[bisect.bisect_left(times, at):]
            if later:
                withdraw_lags.append(later[0] - at)
            else:
                withdraw_missing += 1
        lifetime = [deleted_at[a] - at for a, at in self.adds if a in deleted_at]
        values = [lag for _, lag in lags]
        by_second: dict[int, list[float]] = {}
        for written, lag in lags:
            by_second.setdefault(int(written), []).append(lag)
        return {
            "adds_written": len(self.adds), "adds_advertised": len(lags),
            "adds_never_advertised": missing_deleted + missing_present,
            "adds_never_advertised_deleted_first": missing_deleted,
            "adds_never_advertised_still_present": missing_present,
            "churn_address_lifetime_s": spread(lifetime) if lifetime else None,
            "add_lag": summary(values) if values else None,
            "deletes_written": len(self.dels), "withdraw_lag": summary(withdraw_lags) if withdraw_lags else None,
            "withdraws_missing": withdraw_missing,
            "add_lag_by_second": [{"second": s, "n": len(v), "p50_s": statistics.median(v), "max_s": max(v)}
                                  for s, v in sorted(by_second.items())],
        }


async def exact_state(client: GobgpClient, wanted: set[str], timeout: float = 300) -> tuple[set[str], float]:
    """gobgpd's owned /32s once they equal ``wanted`` (or at the deadline), and how long that took."""
    t0 = time.monotonic()
    while True:  # count first (cheap), list only when the count is right: listing would load the VM
        if await client.path_count(4) == len(wanted) + 1 or time.monotonic() - t0 > timeout:  # + the marker
            held = {str(r.prefix) for r in await client.list_owned_paths(4)}
            if held == wanted or time.monotonic() - t0 > timeout:
                return held, time.monotonic() - t0
        await asyncio.sleep(0.1)


async def probe_watch(target: str, watch: RibWatch, stop: asyncio.Event) -> list[float]:
    """Once a second until ``stop``: AddPath of a floor path -> seen by ``watch``; then deleted again."""
    lags: list[float] = []
    async with GobgpClient(target, FLOOR_OWNER) as client:
        await client.connect()
        attrs = Attributes(large_communities=(FLOOR_OWNER,))
        for i in itertools.count():
            if stop.is_set():
                return lags
            route = Route(ipaddress.ip_network(f"{ipaddress.ip_address('10.251.0.0') + i}/32"), None, attrs)
            mark = len(watch.seen)
            t0 = time.monotonic()
            await client.add_paths([route])
            lags.append(await watch.wait(str(route.prefix), False, mark, 300) - t0)
            await client.delete_paths([route])
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    return lags


async def watch_caught_up(watch: RibWatch, wanted: set[str], timeout: float = 120) -> float | None:
    """Seconds until the watch has seen an add of every ``wanted`` prefix (None: not within ``timeout``):
    its stream may lag gobgpd's table, and an add it has not read yet is not missing."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if wanted <= set(watch.first_times(False)):
            return time.monotonic() - t0
        await asyncio.sleep(0.5)
    return None


async def bench_churn(rate: int, seconds: float, endpoints: int, pool: int = 2000,
                      profile: bool = False) -> dict[str, Any]:
    async with testbed("churn") as (gobgpd, _host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, OWNER) as client:
        await client.connect()
        (ns,) = populate(uplink, netns_dir, [f"10.2.{i}.1/16" for i in range(endpoints)], endpoints)
        churn = Churn(ns, [f"e{i}" for i in range(endpoints)], pool, "10.16.0.0")
        # The agent in its own process, as in production: in this one it would share a core and an event
        # loop with the pacing and the RIB watch (which parses every path update: 2,000 a second here).
        # The watch's marker path goes in first: added later, it would move gobgpd's counts under the agent's
        # path-count check and cost a full re-read in the middle of the churn.
        watch = await RibWatch(gobgpd.target).start()
        with agent_process(gobgpd.target, uplink, netns_dir, "churn", rib_check=3600) as agent:
            await agent_in_sync(agent, netns_dir, "churn")
            await wait_for_count(client, endpoints + pool + 1, agent)
            agent_cpu, window = _cpu_seconds(agent.pid), time.monotonic()
            stop_probe = asyncio.Event()
            probe = asyncio.create_task(probe_watch(gobgpd.target, watch, stop_probe))
            # sampling costs the agent a little CPU: its figure of a profiled run is not the one to quote
            spy = start_py_spy(agent.pid, seconds, netns_dir.parent / "churn-py-spy.txt") if profile else None
            achieved = await churn.run(rate, seconds, watch)
            stop_probe.set()
            probes = await probe
            profiled = await asyncio.to_thread(spy.result) if spy else {}
            wanted = {f"{a}/32" for a in churn.present} | {f"10.2.{i}.1/32" for i in range(endpoints)}
            held, settle = await exact_state(client, wanted)
            agent_cpu, window = _cpu_seconds(agent.pid) - agent_cpu, time.monotonic() - window
            caught_up = await watch_caught_up(watch, wanted)
            await watch.stop()
    return {"rate_per_s": rate, "seconds": seconds, "changes": churn.changes, "achieved_rate": achieved,
            "endpoints": endpoints, "pool": pool, "missing": len(wanted - held), "stale": len(held - wanted),
            "settle_after_end_s": settle, "agent_cpu_percent_of_a_core": 100 * agent_cpu / window,
            "watch_caught_up_after_exact_s": caught_up,
            "observation_lag": summary(probes) if probes else None,
            **churn.account(watch), **profiled,
            "note": "even changes add a fresh /32 (never reused), odd ones delete the oldest present (a pool of "
                    f"{pool} written before the agent started, then the churn's own adds); an add deleted again "
                    "before the agent advertised it counts as never advertised; observation_lag: once a second "
                    "during the churn, a path added through the API (another owner) -> seen by the same RIB "
                    "watch, i.e. what the watch and gobgpd add to every lag above; agent rib_check 3600 s"}


async def bench_noisy(rate: int, seconds: float, events: int, endpoints: int = 100,
                      pool: int = 2000) -> dict[str, Any]:
    """Issue #16's noisy neighbour: namespace A churns at ``rate``; B's event -> RIB latency, quiet vs noisy."""
    indices = itertools.count()
    async with testbed("noisy") as (gobgpd, host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, FLOOR_OWNER) as client:
        await client.connect()
        (noisy_ns,) = populate(uplink, netns_dir, [f"10.2.{i}.1/16" for i in range(endpoints)], endpoints,
                               netns_prefix="noisy")
        churn = Churn(noisy_ns, [f"e{i}" for i in range(endpoints)], pool, "10.16.0.0")
        quiet_ns = create_netns(netns_dir / "quiet")
        await add_ipvlan(host, uplink, quiet_ns, addresses=["10.1.0.2/16"])
        watch = await RibWatch(gobgpd.target).start()
        with agent_process(gobgpd.target, uplink, netns_dir, "noisy", rib_check=3600) as agent:
            await agent_in_sync(agent, netns_dir, "noisy")
            await wait_for_count(client, endpoints + pool + 2, agent)  # + the quiet endpoint and the marker
            with IpBatch(quiet_ns) as ip:
                await sample_round(client, watch, ip, 1, indices)  # unrecorded: the first line waits for `ip`
                quiet = await sample_round(client, watch, ip, events, indices)
                t0 = time.monotonic()
                noise = asyncio.create_task(churn.run(rate, seconds, watch))
                noisy: list[Samples] = []
                while not noise.done():  # sample for as long as the noise lasts, in rounds of ``events``
                    noisy.append(await sample_round(client, watch, ip, min(events, 10), indices))
                achieved = await noise
                sampled_for = time.monotonic() - t0
            await watch.stop()
    quiet_r, noisy_r = judge([quiet]), judge(noisy)
    result: dict[str, Any] = {"rate_per_s": rate, "achieved_rate": achieved, "seconds": seconds,
                              "sampled_for_s": sampled_for, "quiet": quiet_r, "noisy": noisy_r}
    for kind in ("agent_add", "agent_del", "floor_add"):
        for q in ("p50_ms", "p99_ms"):
            result[f"{kind}_{q[:3]}_noisy_vs_quiet"] = noisy_r[kind][q] / quiet_r[kind][q]
    result["_samples"] = {"quiet agent add": quiet_r["_samples"]["agent_add"],
                          "noisy agent add": noisy_r["_samples"]["agent_add"]}
    return result


async def bench_idle(endpoints: int, seconds: float, full_reconcile: float, profile: bool = False) -> dict[str, Any]:
    async with testbed("idle") as (gobgpd, _host, uplink, netns_dir):
        populate(uplink, netns_dir, [f"10.4.{i // 250}.{i % 250 + 1}/16" for i in range(endpoints)], 100)
        with agent_process(gobgpd.target, uplink, netns_dir, "idle", full_reconcile=full_reconcile) as proc:
            await agent_in_sync(proc, netns_dir, "idle")
            before = _cpu_seconds(proc.pid)
            await asyncio.sleep(seconds)  # the measurement window itself
            used = _cpu_seconds(proc.pid) - before
            profiled: dict[str, Any] = {}
            if profile:  # a second window, so sampling cannot inflate the figure above
                spy = start_py_spy(proc.pid, seconds, netns_dir.parent / "idle-py-spy.txt", rate=200)
                profiled = spy.result() if spy else {}
    return {"endpoints": endpoints, "seconds": seconds, "cpu_seconds": used, "cpu_percent": 100 * used / seconds,
            "full_reconcile_s": full_reconcile, "rib_check_s": 30.0,
            "note": f"timers.full_reconcile set to {full_reconcile:g} s (default 300 s) so that the window holds "
                    "at least one full re-read of gobgpd; path-count checks every 30 s (timers.rib_check)",
            **profiled}


TOR_TIMERS = ("FRR datacenter defaults (keepalive 3 / hold 9, no MRAI on eBGP in datacenter profile); gobgpd "
              "sends updates immediately; agent settle 20 ms (the first change after quiet goes at once)")


async def bench_tor(samples: int) -> dict[str, Any]:
    """The embedded rack: a container address added on host1 -> /32 in the FRR ToR's kernel FIB, next to the
    floor: the same kind of path injected straight into host1's gobgpd through the API."""
    from ipvlan_bgp_lab.demo import DEFAULT_TOPOLOGY, wait_for_routes
    from ipvlan_bgp_lab.embedded import NETNS_DIR, EmbeddedLab
    from ipvlan_bgp_lab.fibwatch import FibWatch
    from ipvlan_bgp_lab.status import containers, host_prefix
    from ipvlan_bgp_lab.topology import load_topology

    lab = EmbeddedLab(load_topology(DEFAULT_TOPOLOGY))
    lab.down()
    lab.up(progress=lambda line: None)
    try:
        wait_for_routes(lab, "tor", {host_prefix(c.address) for c in containers(lab)}, timeout=300)
        fib = await FibWatch(NETNS_DIR / lab.state.node_ns("tor")).start()
        floor, agent = [], []
        async with GobgpClient(lab.gobgp_api("host1"), LargeCommunity(65001, 4242, 99)) as client:
            await client.connect(60)
            attrs = Attributes(large_communities=(client.owner,))
            for i in range(samples):
                prefix = f"10.1.100.{150 + i % 50}/32"
                route = Route(ipaddress.ip_network(prefix), None, attrs)
                t0 = time.monotonic()
                await client.add_paths([route])
                floor.append(await fib.wait_for(prefix) - t0)
                await client.delete_paths([route])
                await fib.wait_for(prefix, present=False)
        with IpBatch(NETNS_DIR / "h1c1") as ip:
            for i in range(samples):
                address = f"10.1.100.{50 + i % 50}"
                t0 = time.monotonic()
                ip.send(f"address add {address}/24 dev h1c1")
                agent.append(await fib.wait_for(f"{address}/32") - t0)
                ip.send(f"address del {address}/24 dev h1c1")
                await fib.wait_for(f"{address}/32", present=False)
        await fib.stop()
    finally:
        lab.down()
    result: dict[str, Any] = {"floor_api_to_fib": summary(floor), "agent_event_to_fib": summary(agent),
              "timers": TOR_TIMERS}
    result["p50_over_floor_ms"] = result["agent_event_to_fib"]["p50_ms"] - result["floor_api_to_fib"]["p50_ms"]
    return result


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    panels: list[tuple[str, dict[str, list[float]]]] = []
    for size, figures in result.get("latency", {}).get("by_others", {}).items():
        samples = figures.get("_samples")
        if samples:
            panels.append((f"event -> gobgpd RIB, {size} other endpoints",
                           {"agent add": samples["agent_add"], "floor AddPath -> RIB": samples["floor_add"],
                            "agent del": samples["agent_del"], "floor DeletePath -> RIB": samples["floor_del"]}))
    if "_samples" in result.get("noisy", {}):
        panels.append(("noisy neighbour: another namespace at "
                       f"{result['noisy']['rate_per_s']}/s", result["noisy"]["_samples"]))
    churn = result.get("churn", {}).get("add_lag_by_second")
    sizes = result.get("scale", {}).get("by_size", {})
    if not panels and not churn and not sizes:
        return
    rows = len(panels) + (1 if churn else 0) + (1 if sizes else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3.2 * rows), squeeze=False)
    for ax, (title, series) in zip(axes[:, 0], panels, strict=False):
        top = max(pct(v, 0.99) for v in series.values() if v) * 1e3 * 1.2
        for label, values in series.items():
            ax.hist([min(v * 1e3, top) for v in values], bins=60, range=(0, top), alpha=0.5,
                    label=f"{label} (n={len(values)})")
        ax.set_xlabel("ms (clipped at 1.2x the largest p99)")
        ax.set_ylabel("events")
        ax.set_title(title)
        ax.legend(fontsize=8)
    if sizes:
        ax = axes[len(panels), 0]
        counts = [int(n) for n in sizes]
        for key, label in (("agent_start_to_all_s", "agent start -> all in gobgpd (in-process)"),
                           ("process_exec_to_all_s", "`ipvlan-bgp run` exec -> all in gobgpd"),
                           ("bare_stream_s", "bare AddPathStream of the same paths")):
            ax.plot(counts, [sizes[str(n)][key] for n in counts], marker="o", label=label)
        ax.set_xlabel("endpoints present at start")
        ax.set_ylabel("s")
        ax.set_title("start-up time vs endpoint count")
        ax.legend(fontsize=8)
    if churn:
        ax = axes[-1, 0]
        ax.plot([c["second"] for c in churn], [c["p50_s"] for c in churn], label="p50")
        ax.plot([c["second"] for c in churn], [c["max_s"] for c in churn], label="max")
        ax.set_xlabel("second of the churn the add was written in")
        ax.set_ylabel("add -> gobgpd RIB lag, s")
        ax.set_title(f"churn at {result['churn']['rate_per_s']} changes/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _public(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not k.startswith("_")}
    return value


def save(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_public(result), indent=2) + "\n")


async def run_all(args: argparse.Namespace, json_path: Path) -> dict[str, Any]:
    """Every selected scenario; the JSON is rewritten after each, so a failure keeps what was measured."""
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "kernel": platform.release(), "cpus": os.cpu_count(), **code_state(),
                              "args": {k: v for k, v in vars(args).items() if k not in ("out", "here")},
                              "scenario_seconds": {}}
    for name in args.only or SCENARIOS:
        started = time.monotonic()
        print(f"[{name}] ...", flush=True)
        try:
            result[name] = await run_one(name, args)
        except Exception as exc:  # keep the other scenarios' figures; the failure is recorded, not hidden
            traceback.print_exc()
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            result["failed"] = [*result.get("failed", []), name]
        result["scenario_seconds"][name] = time.monotonic() - started
        print(f"[{name}] {time.monotonic() - started:.0f} s: {json.dumps(_public(result[name]))}", flush=True)
        save(result, json_path)
    return result


async def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "latency":
        return await bench_latency(args.events, args.rounds, tuple(args.others))
    if name == "tor":
        return await bench_tor(args.tor_samples)
    if name == "scale":  # the largest size is "the" scale figure; every size goes into the start-up plot
        by_size = {str(size): await bench_scale(size, args.profile) for size in sorted(args.scale)}
        return {**by_size[str(max(args.scale))], "by_size": by_size}
    if name == "churn":
        return await bench_churn(args.churn_rate, args.churn_seconds, 100, args.churn_pool, args.profile)
    if name == "noisy":
        return await bench_noisy(args.churn_rate, args.noisy_seconds, args.events, pool=args.churn_pool)
    assert name == "idle", name
    return await bench_idle(1000, args.idle_seconds, args.idle_full_reconcile, args.profile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=SCENARIOS)
    parser.add_argument("--tor-samples", type=int, default=50)
    parser.add_argument("--events", type=int, default=100, help="latency samples per round (and per noisy round)")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds per count of other endpoints")
    parser.add_argument("--others", type=int, nargs="+", default=[0, 1000, 10_000],
                        help="other endpoints present during the latency rounds")
    parser.add_argument("--scale", type=int, nargs="+", default=[1000, 5000, 10_000],
                        help="endpoint counts at start (the largest is the headline figure)")
    parser.add_argument("--churn-rate", type=int, default=1000)
    parser.add_argument("--churn-seconds", type=float, default=60.0)
    parser.add_argument("--churn-pool", type=int, default=2000, help="addresses present before the churn")
    parser.add_argument("--noisy-seconds", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=330.0)
    parser.add_argument("--idle-full-reconcile", type=float, default=300.0,
                        help="timers.full_reconcile of the idle agent; keep it below --idle-seconds")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the scale start (that figure is then inflated); py-spy the agent through the "
                             "churn (its CPU figure then inflated) and through a second idle window")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    parser.add_argument("--here", action="store_true", help="run on this kernel (it must have ipvlan)")
    args = parser.parse_args()
    if args.idle_seconds <= args.idle_full_reconcile and (args.only is None or "idle" in args.only):
        parser.error("--idle-seconds must exceed --idle-full-reconcile: the window must hold a full re-read")
    if not args.here and not Path("/sys/module/ipvlan").exists():
        from ipvlan_bgp_lab.vm import run_in_guest

        outdir = Path(tempfile.mkdtemp(prefix="ibgp-bench-"))
        # the guest writes into outdir (the one folder it may write); --out is where the results land here
        forwarded = [a for a, before in zip(sys.argv[1:], ["", *sys.argv[1:]], strict=False)
                     if a != "--out" and before != "--out" and not a.startswith("--out=")]
        argv = [sys.executable, str(Path(__file__).resolve()), "--here", "--out", str(outdir), *forwarded]
        print(f"this kernel has no ipvlan: running in the VM (output in {outdir})", flush=True)
        rc = run_in_guest(argv, outdir, timeout=5400)
        sys.stdout.write((outdir / "guest.log").read_text(errors="replace"))
        results = args.out or RESULTS
        results.mkdir(parents=True, exist_ok=True)
        for produced in outdir.glob("agent-*"):
            (results / produced.name).write_bytes(produced.read_bytes())
            print(f"copied to {results / produced.name}")
        return rc
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    result = asyncio.run(run_all(args, out / f"agent-{stamp}.json"))
    plot(result, out / f"agent-{stamp}.png")
    print(f"results: {out / f'agent-{stamp}.json'}")
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
