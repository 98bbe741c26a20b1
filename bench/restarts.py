"""gobgpd restarts, upgrades and the agent's own absence, at 1,000 and 10,000 paths: what the FRR ToR sees.

In the embedded lab (the reference rack, host1 also advertising N host routes: addresses on real ipvlan
containers), for each scenario of lab/ipvlan_bgp_lab/restarts.py: the ToR's FIB withdrawals of host1's live routes
(target 0) and FIB changes of them, the time until host1's gobgpd holds every path again, until the ToR's
session is back, and until the ToR holds every route fresh. ``--baseline`` also runs everything with host1's
gobgpd configured as before holding back (no ``admin-down``): the figures this design is measured against.

Writes bench/results/restarts-<time>.json (runs in the VM where this kernel has no ipvlan).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ipvlan_bgp_lab.embedded import NETNS_DIR, EmbeddedLab  # noqa: E402
from ipvlan_bgp_lab.fibwatch import FibWatch  # noqa: E402
from ipvlan_bgp_lab.restarts import (  # noqa: E402
    HOST,
    add_bulk,
    measure,
    networks_topology,
    restart_topology,
    scenarios,
    until,
)
from ipvlan_bgp_lab.status import containers  # noqa: E402
from ipvlan_bgp_lab.topology import load_topology  # noqa: E402

RESULTS = REPO / "bench" / "results"
UNIT = REPO / "config" / "gobgpd.service.d" / "ipvlan-bgp.conf"  # the drop-in for Debian's gobgpd.service
SCENARIOS = ["a_sigkill", "b_unit_restart", "c_upgrade", "agent_down", "boot_gobgpd_first", "boot_agent_first"]


def commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


async def run_config(hold_back: bool, sizes: list[int], names: list[str], unit: Path, pause: float,
                     record: dict[str, Any], save: Any) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="restarts-", dir=os.environ.get("IBGP_GUEST_TMP")))
    binary = workdir / "gobgpd"
    shutil.copy2("/usr/bin/gobgpd", binary)
    lab = EmbeddedLab(load_topology(restart_topology(workdir, hold_back)), gobgpd=str(binary))
    lab.down()
    lab.up(progress=lambda line: print(f"  {line}", flush=True))
    fib = await FibWatch(NETNS_DIR / lab.state.node_ns("tor")).start()
    try:
        # IPv4 only: the FIB view below is the routes via the host's IPv4 session (the rack is dual-stack)
        rack = {f"{c.address}/32" for c in containers(lab) if c.host == HOST and ":" not in c.address} \
            | {"10.1.100.0/24"}
        bulk: set[str] = set()
        created = 0
        for size in sorted(sizes):
            started = time.monotonic()
            bulk |= add_bulk(lab, size, start=created)
            created = size
            live = rack | bulk
            took = await until(_all_in(live, fib), started, 1800, "every route in the ToR's FIB")
            print(f"  {len(live)} routes of {HOST} in the ToR's FIB {took:.1f} s after creating them", flush=True)
            runs = record.setdefault(str(size), {"initial_convergence_s": round(took, 2)})
            plans = scenarios(lab, unit, bulk, pause)
            for name in names:
                action, gone = plans[name]
                live -= {gone}
                bulk -= {gone}
                try:
                    runs[name] = await measure(lab, fib, action, live, frozenset({gone} - {""}))
                except TimeoutError as exc:
                    runs[name] = {"error": str(exc)}
                print(f"  [{size} paths] {name}: {json.dumps(runs[name])}", flush=True)
                save()
    finally:
        await fib.stop()
        lab.down()


async def run_networks(hold_back: bool, sizes: list[int], names: list[str], unit: Path, pause: float,
                       record: dict[str, Any], save: Any) -> None:
    """--networks: on this kernel, no ipvlan; a fresh lab per size, host1's agent advertising N /32 networks."""
    for size in sorted(sizes):
        workdir = Path(tempfile.mkdtemp(prefix="restarts-nets-"))
        binary = workdir / "gobgpd"
        shutil.copy2("/usr/bin/gobgpd", binary)
        topology, live = networks_topology(workdir, size, hold_back)
        lab = EmbeddedLab(load_topology(topology), gobgpd=str(binary))
        lab.down()
        started = time.monotonic()
        lab.up(progress=lambda line: print(f"  {line}", flush=True))
        fib = await FibWatch(NETNS_DIR / lab.state.node_ns("tor")).start()
        try:
            took = await until(_all_in(live, fib), started, 1800, "every route in the ToR's FIB")
            print(f"  {len(live)} routes of {HOST} in the ToR's FIB {took:.1f} s after the lab started", flush=True)
            runs = record.setdefault(str(size), {"initial_convergence_s": round(took, 2)})
            plans = scenarios(lab, unit, set(), pause)
            for name in (n for n in names if n in plans):  # no reboot scenarios: they delete container addresses
                action, _ = plans[name]
                try:
                    runs[name] = await measure(lab, fib, action, live)
                except TimeoutError as exc:
                    runs[name] = {"error": str(exc)}
                print(f"  [{size} paths] {name}: {json.dumps(runs[name])}", flush=True)
                save()
        finally:
            await fib.stop()
            lab.down()
            shutil.rmtree(workdir, ignore_errors=True)


def _all_in(prefixes: set[str], fib: FibWatch) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return prefixes <= set(fib.routes)
    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=SCENARIOS)
    parser.add_argument("--baseline", nargs="*", choices=SCENARIOS, default=None,
                        help="also run these scenarios (all if none given) without holding the ToR back")
    parser.add_argument("--baseline-only", action="store_true", help="skip the held-back run")
    parser.add_argument("--unit", type=Path, default=UNIT, help="the gobgpd unit or drop-in whose KillSignal= to use")
    parser.add_argument("--pause", type=float, default=10.0, help="s between the two starts (agent-down, boot)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    parser.add_argument("--here", action="store_true", help="run on this kernel (it must have ipvlan)")
    parser.add_argument("--networks", action="store_true",
                        help="no ipvlan, on this kernel: the paths are the agent's own /32 networks (aggregate_when = "
                             "\"always\") instead of container addresses; ToR and host1 only")
    args = parser.parse_args()
    if not args.here and not args.networks and not Path("/sys/module/ipvlan").exists():
        from ipvlan_bgp_lab.vm import run_in_guest

        outdir = Path(tempfile.mkdtemp(prefix="ibgp-restarts-"))
        argv = [sys.executable, str(Path(__file__).resolve()), "--here", "--out", str(outdir), *sys.argv[1:]]
        print(f"this kernel has no ipvlan: running in the VM (output in {outdir})", flush=True)
        rc = run_in_guest(argv, outdir, timeout=7200)
        sys.stdout.write((outdir / "guest.log").read_text(errors="replace"))
        RESULTS.mkdir(parents=True, exist_ok=True)
        for produced in outdir.glob("restarts-*.json"):
            (RESULTS / produced.name).write_bytes(produced.read_bytes())
            print(f"results: {RESULTS / produced.name}")
        return rc
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"restarts-{time.strftime('%Y%m%dT%H%M%S')}{'-networks' if args.networks else ''}.json"
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit(),
                              "kernel": platform.release(), "cpus": os.cpu_count(), "unit": str(args.unit),
                              "pause_s": args.pause,
                              "paths_from": "agent networks, aggregate_when = always (no ipvlan)" if args.networks
                              else "addresses on ipvlan L3 containers, 1,000 per container"}

    def save() -> None:
        path.write_text(json.dumps(result, indent=2) + "\n")

    runs = [] if args.baseline_only else [(True, args.only)]
    runs += [(False, args.baseline or SCENARIOS)] if args.baseline is not None else []
    for hold_back, names in runs:
        label = "held_back" if hold_back else "baseline_no_hold_back"
        print(f"[{label}]", flush=True)
        run = run_networks if args.networks else run_config
        asyncio.run(run(hold_back, args.paths, names, args.unit, args.pause, result.setdefault(label, {}), save))
    save()
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
