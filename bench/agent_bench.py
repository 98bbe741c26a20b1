"""Agent benchmarks on real ipvlan (inside the VM where this kernel has none), each next to a baseline
measured in the same run, since these machines are shared and noisy: ratios are what we quote.

  latency  netlink change -> path in gobgpd's RIB (WatchEvent), vs bare AddPath round trip
  tor      netlink change -> route in the FRR ToR's kernel FIB, vs a path injected through the GoBGP API
  scale    N endpoints present at agent start -> all N paths in gobgpd, vs bare AddPathStream of N; agent RSS
  churn    endpoint changes at a fixed rate -> lag, and exactness of gobgpd afterwards
  idle     agent CPU with 1,000 stable endpoints

Writes bench/results/agent-<time>.json and a PNG of the latency distributions.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import cProfile
import io
import ipaddress
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
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ipvlan_bgp_lab.containers import IpBatch, add_ipvlan, ifindex, netlink_in, populate  # noqa: E402
from ipvlan_bgp_lab.gobgpd import Gobgpd, global_config  # noqa: E402
from ipvlan_bgp_lab.netns import create_netns, delete_netns, run_in  # noqa: E402

from agent.config import AgentConfig, parse_config  # noqa: E402
from agent.daemon import running  # noqa: E402
from agent.gobgp import GobgpClient, path_to_route  # noqa: E402
from agent.gobgpapi import gobgp_pb2 as api  # noqa: E402
from agent.model import Attributes, LargeCommunity, Route  # noqa: E402

OWNER = LargeCommunity(65001, 4242, 1)
MARKER = Route(ipaddress.ip_network("10.250.255.1/32"), None,
               Attributes(large_communities=(LargeCommunity(65001, 4242, 99),)))
RESULTS = REPO / "bench" / "results"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "p50_ms": statistics.median(samples) * 1e3, "p99_ms": pct(samples, 0.99) * 1e3,
            "max_ms": max(samples) * 1e3}


class RibWatch:
    """gobgpd's best-path table changes, timestamped: (time, prefix, is_withdraw)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[tuple[float, str, bool]] = []
        self.attached = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async with GobgpClient(self.target, OWNER) as c:
            flt = api.WatchEventRequest.Table.Filter(type=api.WatchEventRequest.Table.Filter.BEST, init=True)
            async for reply in c._stub.WatchEvent(api.WatchEventRequest(table=api.WatchEventRequest.Table(
                    filters=[flt]))):
                now = time.monotonic()
                self.attached.set()
                for path in reply.table.paths:
                    route = path_to_route(path)
                    if route is not None:
                        self.seen.append((now, str(route.prefix), path.is_withdraw))

    async def start(self) -> RibWatch:
        # A path of another owner (the agent leaves it alone): the initial table then proves the stream is up.
        async with GobgpClient(self.target, MARKER.attributes.large_communities[0]) as other:
            await other.add_paths([MARKER])
        self.task = asyncio.create_task(self.run())
        await asyncio.wait_for(self.attached.wait(), 60)
        return self

    async def wait(self, prefix: str, withdraw: bool, since: int, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while True:
            for t, p, w in self.seen[since:]:
                if p == prefix and w == withdraw:
                    return t
            if time.monotonic() > deadline:
                raise TimeoutError(f"{prefix} {'withdraw' if withdraw else 'add'} never reached the RIB")
            await asyncio.sleep(0.001)

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
    base = Path(os.environ.get("IBGP_GUEST_TMP") or tempfile.mkdtemp()) / name
    netns_dir = base / "netns"
    netns_dir.mkdir(parents=True)
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


async def api_to_rib_watch(client: GobgpClient, watch: RibWatch, n: int) -> list[float]:
    """The same observation point as the agent's figure, without the agent: AddPath -> WatchEvent."""
    attrs = Attributes(large_communities=(OWNER,))
    samples = []
    for i in range(n):
        route = Route(ipaddress.ip_network(f"10.251.{i // 256}.{i % 256}/32"), None, attrs)
        mark = len(watch.seen)
        t0 = time.monotonic()
        await client.add_paths([route])
        samples.append(await watch.wait(str(route.prefix), False, mark) - t0)
        mark = len(watch.seen)
        await client.delete_paths([route])
        await watch.wait(str(route.prefix), True, mark)
    return samples


async def bare_addpath_rtt(client: GobgpClient, n: int) -> list[float]:
    attrs = Attributes(large_communities=(OWNER,))
    samples = []
    for i in range(n):
        route = Route(ipaddress.ip_network(f"10.250.{i // 256}.{i % 256}/32"), None, attrs)
        t0 = time.monotonic()
        await client.add_paths([route])
        samples.append(time.monotonic() - t0)
        await client.delete_paths([route])
    return samples


async def bench_latency(events: int) -> dict[str, Any]:
    async with testbed("latency") as (gobgpd, host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, OWNER) as client:
        await client.connect()
        baseline = await bare_addpath_rtt(client, min(events, 500))
        watch = await RibWatch(gobgpd.target).start()
        rib_floor = await api_to_rib_watch(client, watch, min(events, 200))
        await watch.stop()
        ns = create_netns(netns_dir / "c1")
        await add_ipvlan(host, uplink, ns, addresses=["10.1.0.2/16"])
        async with running(agent_config(gobgpd.target, uplink, netns_dir)):
            watch = await RibWatch(gobgpd.target).start()
            adds: list[float] = []
            dels: list[float] = []
            with IpBatch(ns) as ip:  # the change comes from another program, as Docker's does
                for i in range(events):
                    address = str(ipaddress.ip_address("10.1.1.0") + i)
                    for verb, withdraw, sink in (("add", False, adds), ("del", True, dels)):
                        mark = len(watch.seen)
                        t0 = time.monotonic()
                        ip.send(f"address {verb} {address}/16 dev eth0")
                        sink.append(await watch.wait(f"{address}/32", withdraw, mark) - t0)
                    await asyncio.sleep(0.005)  # a modest rate, not a burst
            await watch.stop()
    result: dict[str, Any] = {"baseline_addpath": summary(baseline), "baseline_api_to_rib_watch": summary(rib_floor),
              "advertise": summary(adds), "withdraw": summary(dels)}
    advertise_p50 = result["advertise"]["p50_ms"]
    result["ratio_p50"] = advertise_p50 / result["baseline_addpath"]["p50_ms"]
    result["ratio_p50_vs_api_to_rib_watch"] = advertise_p50 / result["baseline_api_to_rib_watch"]["p50_ms"]
    result["_samples"] = {"bare AddPath": baseline, "AddPath -> RIB watch": rib_floor, "advertise": adds,
                          "withdraw": dels}
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
        async with running(config, 600) as daemon:
            to_full = time.monotonic() - t0
            if profiler:
                profiler.disable()
            held = len(daemon.reconciler.actual or {})
        # Again as its own process (`ipvlan-bgp run`), for the agent's own memory and a start that includes
        # the interpreter and imports; done is when gobgpd's table holds every path.
        assert await client.path_count(4) == 0, "the in-process agent should have withdrawn its paths"
        with agent_process(gobgpd.target, uplink, netns_dir, "scale") as proc:
            t0 = time.monotonic()
            deadline = t0 + 600
            while await client.path_count(4) < count:
                assert time.monotonic() < deadline and proc.poll() is None, "agent process never got every path out"
                await asyncio.sleep(0.05)
            exec_to_all = time.monotonic() - t0
            memory = _memory_kib(proc.pid)
    extra = {"profile_top_cumulative": _top(profiler)} if profiler else {}
    return {**extra, "endpoints": count, "created_s": created, "bare_stream_s": bare, "agent_start_to_all_s": to_full,
            "paths_in_gobgpd": held, "ratio": to_full / bare, "process_exec_to_all_s": exec_to_all,
            "process_ratio": exec_to_all / bare, "rss_mb": memory["VmRSS"] / 1024,
            "peak_rss_mb": memory["VmHWM"] / 1024,
            "note": "ratio: agent started inside the benchmark's process (imports done); process_*: `ipvlan-bgp "
                    "run` from exec, including interpreter start and imports; RSS of that process"}


@contextmanager
def agent_process(target: str, uplink: str, netns_dir: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m agent.cli run` on a TOML config like ``agent_config``'s; its log in ``<name>.log``."""
    config = netns_dir.parent / f"{name}.toml"
    config.write_text(
        f'uplinks = ["{uplink}"]\nownership_community = "{OWNER}"\nnetns_dirs = ["{netns_dir}"]\n'
        f'max_prefixes = 200000\nmax_prefixes_per_namespace = 200000\n'
        f'[gobgp]\ntarget = "{target}"\n[status]\nsocket = "{netns_dir.parent / name}.sock"\n'
        '[metrics]\nlisten = ""\n[[networks]]\nprefix = "10.0.0.0/8"\nadvertise = "host"\n')
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


async def bench_churn(rate: int, seconds: float, endpoints: int) -> dict[str, Any]:
    async with testbed("churn") as (gobgpd, _host, uplink, netns_dir), \
            GobgpClient(gobgpd.target, OWNER) as client:
        await client.connect()
        (ns,) = populate(uplink, netns_dir, [f"10.2.{i}.1/16" for i in range(endpoints)], endpoints)
        # The agent in its own process, as in production: in this one it would share a core and an event
        # loop with the pacing and the RIB watch (which parses every path update: 2,000 a second here).
        with agent_process(gobgpd.target, uplink, netns_dir, "churn") as agent:
            await agent_in_sync(agent, netns_dir, "churn")
            agent_cpu = _cpu_seconds(agent.pid)
            watch = await RibWatch(gobgpd.target).start()
            ip = IpBatch(ns)  # applies changes as fast as it reads them; we pace the lines
            present: set[str] = set()
            sent: list[tuple[str, float]] = []  # (address, when its add was written)
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < seconds:
                due = int((time.monotonic() - t0) * rate)
                lines = []
                while n < due:
                    slot = n % 2000
                    address = f"10.3.{slot // 250}.{slot % 250 + 1}"
                    dev = f"e{slot % endpoints}"
                    verb = "del" if address in present else "add"
                    # /32: every address its own subnet, so no delete ever takes secondaries along
                    lines.append(f"address {verb} {address}/32 dev {dev}")
                    (present.discard if verb == "del" else present.add)(address)
                    if verb == "add":
                        sent.append((address, time.monotonic()))
                    n += 1
                ip.send(*lines)
                await asyncio.sleep(0.01)  # the pacing tick
            ip.close()
            finished = time.monotonic()
            wanted = {f"{a}/32" for a in present} | {f"10.2.{i}.1/32" for i in range(endpoints)}
            deadline = time.monotonic() + 300
            while True:  # count first (cheap), list only when the count is right: listing would load the VM
                if await client.path_count(4) == len(wanted) + 1 or time.monotonic() > deadline:  # + the marker
                    held = {str(r.prefix) for r in await client.list_owned_paths(4)}
                    if held == wanted or time.monotonic() > deadline:
                        break
                await asyncio.sleep(0.1)
            settle = time.monotonic() - finished
            agent_cpu = _cpu_seconds(agent.pid) - agent_cpu
            rib_adds: dict[str, list[float]] = {}
            for at, prefix, withdrawn in watch.seen:
                if not withdrawn:
                    rib_adds.setdefault(prefix, []).append(at)
            lags = []
            for address, at in sent:  # lag: from writing the add to the first RIB add of that prefix after it
                times = rib_adds.get(f"{address}/32", [])
                later = times[bisect.bisect_left(times, at):]
                if later:
                    lags.append(later[0] - at)
            await watch.stop()
    return {"rate_per_s": rate, "seconds": seconds, "changes": n, "achieved_rate": n / seconds,
            "missing": len(wanted - held), "stale": len(held - wanted), "settle_after_end_s": settle,
            "agent_cpu_percent_of_a_core": 100 * agent_cpu / (seconds + settle),
            "lag": summary(lags) if lags else None}


async def bench_idle(endpoints: int, seconds: float, profile: bool = False) -> dict[str, Any]:
    async with testbed("idle") as (gobgpd, _host, uplink, netns_dir):
        populate(uplink, netns_dir, [f"10.4.{i // 250}.{i % 250 + 1}/16" for i in range(endpoints)], 100)
        with agent_process(gobgpd.target, uplink, netns_dir, "idle") as proc:
            await agent_in_sync(proc, netns_dir, "idle")
            before = _cpu_seconds(proc.pid)
            await asyncio.sleep(seconds)  # the measurement window itself
            used = _cpu_seconds(proc.pid) - before
            profiled: dict[str, Any] = {}
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            if profile and Path(spy).exists():  # a second window, so sampling cannot inflate the figure above
                raw = netns_dir.parent / "idle-py-spy.txt"
                subprocess.run([spy, "record", "--nonblocking", "--format", "raw", "--rate", "200", "-o", str(raw),
                                "-d", str(int(seconds)), "-p", str(proc.pid)], check=False, capture_output=True)
                profiled = {"py_spy_top_leaves": _py_spy_top(raw)} if raw.exists() else {}
    return {"endpoints": endpoints, "seconds": seconds, "cpu_seconds": used, "cpu_percent": 100 * used / seconds,
            "note": "default timers: a path-count check every 30 s (timers.rib_check)", **profiled}


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
    samples = result.get("latency", {}).get("_samples")
    if not samples:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in samples.items():
        ax.hist([v * 1e3 for v in values], bins=60, alpha=0.55, label=f"{label} (n={len(values)})")
    ax.set_xlabel("ms")
    ax.set_ylabel("events")
    ax.set_title("netlink change -> gobgpd RIB, vs bare AddPath round trip (same VM, same run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def save(result: dict[str, Any], path: Path) -> None:
    clean = {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) else v)
             for k, v in result.items()}
    path.write_text(json.dumps(clean, indent=2) + "\n")


async def run_all(args: argparse.Namespace, json_path: Path) -> dict[str, Any]:
    """Every selected scenario; the JSON is rewritten after each, so a failure keeps what was measured."""
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "kernel": platform.release(), "cpus": os.cpu_count()}
    for name in args.only or ["latency", "tor", "scale", "churn", "idle"]:
        started = time.monotonic()
        print(f"[{name}] ...", flush=True)
        if name == "latency":
            result[name] = await bench_latency(args.events)
        elif name == "tor":
            result[name] = await bench_tor(args.tor_samples)
        elif name == "scale":
            result[name] = await bench_scale(args.scale, args.profile)
        elif name == "churn":
            result[name] = await bench_churn(args.churn_rate, args.churn_seconds, 100)
        elif name == "idle":
            result[name] = await bench_idle(1000, args.idle_seconds, args.profile)
        printable = {k: v for k, v in result[name].items() if not k.startswith("_")}
        print(f"[{name}] {time.monotonic() - started:.0f} s: {json.dumps(printable)}", flush=True)
        save(result, json_path)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=["latency", "tor", "scale", "churn", "idle"])
    parser.add_argument("--tor-samples", type=int, default=50)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--scale", type=int, default=10_000)
    parser.add_argument("--churn-rate", type=int, default=1000)
    parser.add_argument("--churn-seconds", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the scale start (that figure is then inflated); py-spy the idle agent")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    parser.add_argument("--here", action="store_true", help="run on this kernel (it must have ipvlan)")
    args = parser.parse_args()
    if not args.here and not Path("/sys/module/ipvlan").exists():
        from ipvlan_bgp_lab.vm import run_in_guest

        outdir = Path(tempfile.mkdtemp(prefix="ibgp-bench-"))
        argv = [sys.executable, str(Path(__file__).resolve()), "--here", "--out", str(outdir), *sys.argv[1:]]
        print(f"this kernel has no ipvlan: running in the VM (output in {outdir})", flush=True)
        rc = run_in_guest(argv, outdir, timeout=5400)
        sys.stdout.write((outdir / "guest.log").read_text(errors="replace"))
        RESULTS.mkdir(parents=True, exist_ok=True)
        for produced in outdir.glob("agent-*"):
            (RESULTS / produced.name).write_bytes(produced.read_bytes())
        return rc
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    result = asyncio.run(run_all(args, out / f"agent-{stamp}.json"))
    plot(result, out / f"agent-{stamp}.png")
    print(f"results: {out / f'agent-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
