"""Cost of one daemon pass after a single endpoint change, with N endpoints in K namespaces present, on the
in-memory gobgpd and discovery (tests/fakes.py): the agent's own work per change, without netlink or gRPC.
Runs on any kernel in a few seconds; ``--profile`` prints where the time goes.

    .venv/bin/python bench/pass_cost.py --endpoints 10000 --namespaces 1000 [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ipaddress
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.config import parse_config  # noqa: E402
from agent.daemon import running  # noqa: E402
from agent.endpoints import Endpoint, IpvlanMode  # noqa: E402
from agent.model import LargeCommunity  # noqa: E402
from tests.fakes import FakeDiscovery, FakeGobgp  # noqa: E402

OWNER = LargeCommunity(65001, 4242, 1)


def namespace(index: int, size: int, extra: int = 0) -> tuple[Endpoint, ...]:
    """``size`` endpoints of one address each, plus ``extra`` ones with addresses no other namespace uses."""
    found = []
    for i in range(size + extra):
        n = index * size + i + (200_000 if i >= size else 0)
        address = ipaddress.ip_interface(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32")
        found.append(Endpoint(f"/run/netns/c{index}", "eth0", 2 + i, IpvlanMode.L3, "eth0", (address,), True))
    return tuple(found)


class Namespaces(FakeDiscovery):
    """A discovery whose namespaces are set one by one, unchanged ones keeping their tuples (as the real one)."""

    def __init__(self, groups: dict[str, tuple[Endpoint, ...]]) -> None:
        super().__init__()
        self.groups = groups

    def by_namespace(self) -> dict[str, tuple[Endpoint, ...]]:
        return self.groups


async def measure(endpoints: int, namespaces: int, changes: int, profile: bool) -> None:
    size = endpoints // namespaces
    groups = {f"/run/netns/c{k}": namespace(k, size) for k in range(namespaces)}
    discovery, gobgp = Namespaces(groups), FakeGobgp(OWNER)
    discovery.synced.set()
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({
            "uplinks": ["eth0"], "ownership_community": str(OWNER),
            "networks": [{"prefix": "10.0.0.0/9", "advertise": "both"}], "status": {"socket": f"{tmp}/agent.sock"},
            "metrics": {"listen": ""}, "max_prefixes": 200_000, "max_prefixes_per_namespace": 200_000,
            "timers": {"settle": 0.0, "namespace_interval": 0.0},
            "dampening": {"enabled": False}})  # a change every pass would be a flap, and be paced
        started = time.perf_counter()
        async with running(config, speaker=gobgp, discovery=discovery) as daemon:
            first = time.perf_counter() - started
            profiler = cProfile.Profile()
            base = daemon.reconciler.stats.passes
            started = time.perf_counter()
            if profile:
                profiler.enable()
            unchanged = groups["/run/netns/c0"]
            extras = namespace(0, size, extra=2)[size:]
            for j in range(changes):
                groups = dict(groups)
                # one endpoint added or removed; the others keep their objects, as discovery keeps them
                groups["/run/netns/c0"] = unchanged + extras[:1 + j % 2]
                discovery.groups = groups
                discovery.notify()
                # a bare yield, not an Event: the loop runs the pass next, and nothing is added to its time
                while daemon.reconciler.stats.passes < base + j + 1:  # noqa: ASYNC110
                    await asyncio.sleep(0)
            per_change = (time.perf_counter() - started) / changes
            profiler.disable()
    print(f"{endpoints} endpoints in {namespaces} namespaces: start to in sync {first * 1000:.0f} ms, "
          f"a pass per change {per_change * 1000:.2f} ms (mean of {changes}); gobgpd holds {len(gobgp.rib)} paths")
    if profile:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(measure(args.endpoints, args.namespaces, args.changes, args.profile))


if __name__ == "__main__":
    main()
