"""The whole agent on real ipvlan endpoints (in the VM) against a real gobgpd."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from ipvlan_bgp_lab.containers import IpBatch, add_container
from ipvlan_bgp_lab.gobgpd import Gobgpd, global_config
from ipvlan_bgp_lab.netns import delete_netns, run_in
from pyroute2 import AsyncIPRoute

from agent.config import AgentConfig, parse_config
from agent.daemon import running
from agent.gobgp import GobgpClient, path_to_route
from agent.gobgpapi import gobgp_pb2 as api
from agent.model import Attributes, Community, LargeCommunity, Route

from ..helpers import stop_tasks

pytestmark = pytest.mark.vm
OWNER = LargeCommunity(65001, 4242, 7)
FOREIGN = LargeCommunity(65001, 4242, 99)
MARKER = "192.0.2.250/32"


@pytest.fixture
def gobgpd(tmp_path: Path) -> Iterator[Gobgpd]:
    run_in(None, "ip", "link", "set", "lo", "up")
    with Gobgpd(global_config(65001, "10.255.0.1"), tmp_path / "gobgpd") as daemon:
        yield daemon


def make_config(gobgpd: Gobgpd, uplink: str, netns_dir: Path, **extra: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "uplinks": [uplink],
        "ownership_community": str(OWNER),
        "netns_dirs": [str(netns_dir)],
        "gobgp": {"target": gobgpd.target},
        "networks": [
            {"prefix": "10.1.100.0/24", "communities": ["65001:100"], "large_communities": ["65001:1:100"],
             "local_pref": 150, "med": 10},
            {"prefix": "2001:db8:100::/64", "advertise": "host"},
        ],
        "timers": {"full_reconcile": 3600.0},
        "status": {"socket": str(netns_dir.parent / f"{netns_dir.name}.sock")},
        "metrics": {"listen": ""},
    }
    data.update(extra)
    return parse_config(data)


@pytest.fixture
async def client(gobgpd: Gobgpd) -> AsyncIterator[GobgpClient]:
    async with GobgpClient(gobgpd.target, OWNER) as c:
        await c.connect()
        yield c


async def owned(client: GobgpClient) -> dict[str, Any]:
    return {str(r.prefix): r for r in [*await client.list_owned_paths(4), *await client.list_owned_paths(6)]}


async def wait_owned(client: GobgpClient, wanted: set[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = await owned(client)
        if set(current) == wanted:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"gobgpd holds {sorted(current)}, expected {sorted(wanted)}")
        await asyncio.sleep(0.05)


async def test_container_lifecycle_in_gobgpd(gobgpd: Gobgpd, client: GobgpClient, host: AsyncIPRoute,
                                             uplink: str, netns_dir: Path) -> None:
    config = make_config(gobgpd, uplink, netns_dir)
    async with running(config) as daemon:
        c1 = await add_container(host, uplink, netns_dir / "c1", ["10.1.100.2/24", "2001:db8:100::2/64"])
        paths = await wait_owned(client, {"10.1.100.2/32", "10.1.100.0/24", "2001:db8:100::2/128"})
        host_route = paths["10.1.100.2/32"]
        assert host_route.next_hop is None  # unspecified: gobgpd gives each peer its session address
        assert host_route.attributes.communities == (Community(65001, 100),)
        assert set(host_route.attributes.large_communities) == {OWNER, LargeCommunity(65001, 1, 100)}
        assert (host_route.attributes.local_pref, host_route.attributes.med) == (150, 10)

        hijacker = await add_container(host, uplink, netns_dir / "evil", ["8.8.8.8/32", "10.1.100.3/24"])
        await wait_owned(client, {"10.1.100.2/32", "10.1.100.3/32", "10.1.100.0/24", "2001:db8:100::2/128"})
        assert ipaddress.ip_network("8.8.8.8/32") in daemon.reconciler.stats.refused_outside

        delete_netns(hijacker)
        delete_netns(c1)
        await wait_owned(client, set())  # the /24 goes with its last container


async def test_explicit_next_hop(gobgpd: Gobgpd, client: GobgpClient, host: AsyncIPRoute, uplink: str,
                                 netns_dir: Path) -> None:
    config = make_config(gobgpd, uplink, netns_dir, next_hop={"ipv4": "192.0.2.11"})
    await add_container(host, uplink, netns_dir / "c1", ["10.1.100.2/24"])
    async with running(config):
        paths = await wait_owned(client, {"10.1.100.2/32", "10.1.100.0/24"})
        assert str(paths["10.1.100.2/32"].next_hop) == "192.0.2.11"


async def watch_table(gobgpd: Gobgpd, seen: list[tuple[float, str, bool]], init: bool = False) -> None:
    """Record every change of gobgpd's best-path table: (time, prefix, is_withdraw); ``init``: the current
    table first, which also tells the caller that the stream is attached."""
    async with GobgpClient(gobgpd.target, OWNER) as c:
        request = api.WatchEventRequest(table=api.WatchEventRequest.Table(
            filters=[api.WatchEventRequest.Table.Filter(type=api.WatchEventRequest.Table.Filter.BEST, init=init)]))
        async for reply in c._stub.WatchEvent(request):
            now = time.monotonic()
            for path in reply.table.paths:
                route = path_to_route(path)
                if route is not None:
                    seen.append((now, str(route.prefix), path.is_withdraw))


async def flush_watch(gobgpd: Gobgpd, seen: list[tuple[float, str, bool]], watcher: asyncio.Task[None]) -> None:
    """Wait until everything gobgpd's table did so far has come through the watch stream: add a foreign
    marker path (another owner, so the agent leaves it alone), wait for it and remove it (the caller drops
    its events, ``MARKER``, after stopping the watcher)."""
    marker = Route(ipaddress.ip_network(MARKER), ipaddress.ip_address("192.0.2.1"),
                   Attributes(large_communities=(FOREIGN,)))
    async with GobgpClient(gobgpd.target, FOREIGN) as other:
        await other.add_paths([marker])
        deadline = time.monotonic() + 30
        while not any(p == MARKER for _, p, _ in seen):
            assert time.monotonic() < deadline and not watcher.done(), "the marker path never came through"
            await asyncio.sleep(0.01)
        await other.delete_paths([marker])


async def test_event_to_rib_latency(gobgpd: Gobgpd, client: GobgpClient, host: AsyncIPRoute, uplink: str,
                                    netns_dir: Path) -> None:
    config = make_config(gobgpd, uplink, netns_dir)
    ns = await add_container(host, uplink, netns_dir / "c1", ["10.1.100.2/24"])
    seen: list[tuple[float, str, bool]] = []
    async with running(config):
        await wait_owned(client, {"10.1.100.2/32", "10.1.100.0/24"})
        watcher = asyncio.create_task(watch_table(gobgpd, seen, init=True))
        adds: list[float] = []
        dels: list[float] = []
        ip = IpBatch(ns)  # the change comes from another program, as Docker's does
        try:
            deadline = time.monotonic() + 30
            while not seen:  # the initial table: the stream is attached
                assert time.monotonic() < deadline, "WatchEvent stream never attached"
                await asyncio.sleep(0.01)
            for i in range(200):
                address = f"10.1.100.{10 + i}"
                for is_withdraw, verb, sink in ((False, "add", adds), (True, "del", dels)):
                    mark = len(seen)
                    started = time.monotonic()
                    ip.send(f"address {verb} {address}/24 dev eth0")
                    deadline = started + 30
                    while not any(p == f"{address}/32" and w == is_withdraw for _, p, w in seen[mark:]):
                        assert time.monotonic() < deadline, f"{verb} {address} never reached the RIB"
                        await asyncio.sleep(0.001)
                    arrived = next(t for t, p, w in seen[mark:] if p == f"{address}/32" and w == is_withdraw)
                    sink.append(arrived - started)
        finally:
            ip.close()
            await stop_tasks(watcher)
    for name, samples in (("advertise", adds), ("withdraw", dels)):
        samples.sort()
        print(f"event -> gobgpd RIB ({name}), n={len(samples)}: median {statistics.median(samples) * 1e3:.1f} ms, "
              f"p99 {samples[int(0.99 * (len(samples) - 1))] * 1e3:.1f} ms, max {samples[-1] * 1e3:.1f} ms")


async def test_endpoints_and_plan_commands(gobgpd: Gobgpd, client: GobgpClient, host: AsyncIPRoute, uplink: str,
                                           netns_dir: Path, tmp_path: Path) -> None:
    """`ipvlan-bgp endpoints` and `plan` as an operator runs them: real ipvlan, a real gobgpd, nothing sent."""
    c1 = await add_container(host, uplink, netns_dir / "c1", ["10.1.100.2/24", "2001:db8:100::2/64"])
    # (one ipvlan mode per parent: the kernel switches every slave of the uplink to the last one set)
    await add_container(host, uplink, netns_dir / "c2", ["10.1.100.3/24"], up=False)
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'uplinks = ["{uplink}"]\nownership_community = "{OWNER}"\nnetns_dirs = ["{netns_dir}"]\n'
        f'[gobgp]\ntarget = "{gobgpd.target}"\n[status]\nsocket = "{tmp_path / "cli.sock"}"\n'
        '[[networks]]\nprefix = "10.1.100.0/24"\n[[networks]]\nprefix = "2001:db8:100::/64"\nadvertise = "host"\n'
    )

    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "agent.cli", *args, str(config_file)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    found = {e["ifname"] + "@" + e["netns"]: e for e in json.loads(cli("endpoints", "--json"))["endpoints"]}
    assert set(found) == {f"eth0@{c1}", f"eth0@{netns_dir / 'c2'}"}
    e1, e2 = found[f"eth0@{c1}"], found[f"eth0@{netns_dir / 'c2'}"]
    assert (e1["mode"], e1["parent"], e1["ready"]) == ("L3", uplink, True)
    assert set(e1["addresses"]) == {"10.1.100.2/24", "2001:db8:100::2/64"}
    assert (e2["mode"], e2["ready"], e2["addresses"]) == ("L3", False, ["10.1.100.3/24"])
    table = cli("endpoints")
    assert table.splitlines()[-1] == f"2 endpoint(s) on uplink(s) {uplink}" and str(c1) in table

    plan = cli("plan").splitlines()
    added = {line.split()[1] for line in plan if line.startswith("+")}
    assert added == {"10.1.100.2/32", "10.1.100.0/24", "2001:db8:100::2/128"}  # c2 is down: not ready
    assert plan[-1] == "3 to add, 0 to withdraw, 0 unchanged (dry run: nothing sent)"
    assert await owned(client) == {}


async def test_agent_sigkill_and_restart_withdraws_nothing(gobgpd: Gobgpd, client: GobgpClient,
                                                           host: AsyncIPRoute, uplink: str, netns_dir: Path,
                                                           tmp_path: Path) -> None:
    await add_container(host, uplink, netns_dir / "c1", ["10.1.100.2/24"])
    await add_container(host, uplink, netns_dir / "c2", ["10.1.100.3/24", "2001:db8:100::3/64"])
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'uplinks = ["{uplink}"]\nownership_community = "{OWNER}"\nnetns_dirs = ["{netns_dir}"]\n'
        f'[gobgp]\ntarget = "{gobgpd.target}"\n[status]\nsocket = "{netns_dir.parent / "restart.sock"}"\n'
        '[metrics]\nlisten = ""\n'
        '[[networks]]\nprefix = "10.1.100.0/24"\n[[networks]]\nprefix = "2001:db8:100::/64"\nadvertise = "host"\n'
    )
    wanted = {"10.1.100.2/32", "10.1.100.3/32", "10.1.100.0/24", "2001:db8:100::3/128"}
    argv = [sys.executable, "-m", "agent.cli", "run", str(config_file)]
    first_log, second_log = tmp_path / "agent-1.log", tmp_path / "agent-2.log"  # one file each: the wait
    # below must see the second agent's "in sync", never the first one's
    with first_log.open("wb") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    seen: list[tuple[float, str, bool]] = []
    watcher: asyncio.Task[None] | None = None
    try:
        await wait_owned(client, wanted, timeout=120)
        watcher = asyncio.create_task(watch_table(gobgpd, seen, init=True), name="watch gobgpd table")
        deadline = time.monotonic() + 30
        while len(seen) < len(wanted):  # the initial table: the stream is attached
            assert time.monotonic() < deadline and not watcher.done(), "WatchEvent stream never attached"
            await asyncio.sleep(0.01)
        seen.clear()
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        with second_log.open("wb") as log:
            agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while b"in sync with gobgpd" not in second_log.read_bytes():
            assert agent.poll() is None and time.monotonic() < deadline, second_log.read_text()
            await asyncio.sleep(0.1)
        assert set(await owned(client)) == wanted
        await flush_watch(gobgpd, seen, watcher)
        await stop_tasks(watcher)
        watcher = None
        seen[:] = [s for s in seen if s[1] != MARKER]
        assert [s for s in seen if s[2]] == [], f"withdrawals seen across the agent restart: {seen}"
        assert seen == [], f"re-advertisements seen across the agent restart: {seen}"
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        if watcher is not None:
            await stop_tasks(watcher)


async def test_gobgpd_sigkill_and_restart_all_paths_back(gobgpd: Gobgpd, client: GobgpClient, host: AsyncIPRoute,
                                                         uplink: str, netns_dir: Path) -> None:
    config = make_config(gobgpd, uplink, netns_dir)
    for n in range(20):
        await add_container(host, uplink, netns_dir / f"c{n}", [f"10.1.100.{n + 2}/24"])
    wanted = {f"10.1.100.{n + 2}/32" for n in range(20)} | {"10.1.100.0/24"}
    async with running(config) as daemon:
        await wait_owned(client, wanted)
        gobgpd.kill()
        gobgpd.start()
        answered = time.monotonic()
        await wait_owned(client, wanted)
        print(f"gobgpd restart: full RIB {time.monotonic() - answered:.3f} s after its API answered again")
        assert daemon.state.gobgp_restarts >= 1
