"""Baseline: what the bare GoBGP API does on this machine, the floor every agent figure is compared with.

Against a real gobgpd (started here on a free loopback port): 10,000 IPv4 /32s added with AddPath one by
one (round trip p50/p99) and with AddPathStream (paths/s). Prints a table; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from ipvlan_bgp_lab.gobgpd import Gobgpd, global_config
from provenance import code_state

from agent.gobgp import GobgpClient
from agent.model import Attributes, LargeCommunity, Route

OWNER = LargeCommunity(65001, 4242, 1)
RESULTS = Path(__file__).resolve().parent / "results"


def host_routes(count: int, first: str = "10.64.0.0") -> list[Route]:
    base = int(ipaddress.ip_address(first))
    attrs = Attributes(large_communities=(OWNER,))
    return [Route(ipaddress.ip_network(f"{ipaddress.ip_address(base + i)}/32"), None, attrs) for i in range(count)]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(target: str, count: int) -> dict[str, Any]:
    routes = host_routes(count)
    async with GobgpClient(target, OWNER) as client:
        await client.connect()
        latencies = []
        start = time.perf_counter()
        for r in routes:
            t0 = time.perf_counter()
            await client.add_paths([r])
            latencies.append(time.perf_counter() - t0)
        unary_s = time.perf_counter() - start
        assert len(await client.list_owned_paths(4)) == count
        await client.delete_paths(routes)

        start = time.perf_counter()
        await client.add_paths(routes)
        stream_s = time.perf_counter() - start
        assert len(await client.list_owned_paths(4)) == count

        start = time.perf_counter()
        await client.delete_paths(routes)
        withdraw_s = time.perf_counter() - start
        assert await client.list_owned_paths(4) == []
    return {
        "paths": count,
        "addpath_unary_paths_per_s": count / unary_s,
        "addpath_rtt_p50_ms": statistics.median(latencies) * 1e3,
        "addpath_rtt_p99_ms": percentile(latencies, 0.99) * 1e3,
        "addpathstream_seconds": stream_s,
        "addpathstream_paths_per_s": count / stream_s,
        "withdraw_stream_paths_per_s": count / withdraw_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    with Gobgpd(global_config(65001, "10.255.0.1")) as daemon:
        result = asyncio.run(measure(daemon.target, args.paths))
    result.update(date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine=platform.node(),
                  cpus=os.cpu_count(), **code_state())
    print(f"GoBGP API baseline, {args.paths} IPv4 /32s (gobgpd 3.10, {result['cpus']} cores)")
    print(f"  AddPath unary, sequential : {result['addpath_unary_paths_per_s']:9.0f} paths/s   "
          f"RTT p50 {result['addpath_rtt_p50_ms']:.2f} ms  p99 {result['addpath_rtt_p99_ms']:.2f} ms")
    print(f"  AddPathStream, 1000/msg   : {result['addpathstream_paths_per_s']:9.0f} paths/s   "
          f"({result['addpathstream_seconds']:.2f} s for all)")
    print(f"  withdraw via stream       : {result['withdraw_stream_paths_per_s']:9.0f} paths/s")
    print(f"  stream / unary ratio      : "
          f"{result['addpathstream_paths_per_s'] / result['addpath_unary_paths_per_s']:9.1f} x")
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"gobgp_baseline-{time.strftime('%Y%m%dT%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"  results: {out}")


if __name__ == "__main__":
    main()
