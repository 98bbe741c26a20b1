"""The real Docker engine's ipvlan driver end to end (in the VM): containers made only with `docker` commands,
the agent with ``[docker]`` on (networks from Docker, IPAM ownership), and an FRR ToR whose kernel FIB and
pings say whether each container is reachable. See tests/vm/dockerrack.py for the wiring."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.fibwatch import FibWatch

from agent.status import query

from ..helpers import eventually
from .dockerrack import DOCKER, IDLE, IMAGE, DockerEngine, DockerRack, guest_tmp, sh

pytestmark = pytest.mark.vm
# Docker 20.10's ipvlan driver refuses ipvlan_mode=l3s ("requested ipvlan mode 'l3s' is not valid"): the second
# network is L3 too, on a parent of its own (Docker keeps one ipvlan network per parent). L3S is covered by the
# lab's tests, with slaves made by `ip`.
L3, L3B = "l3net", "l3bnet"
GATEWAY = {L3: "192.0.2.1", L3B: "192.0.2.5"}
AGGREGATE = {L3: "10.1.100.0/24", L3B: "10.2.100.0/24"}
# `docker run` returned -> its /32 in the ToR FIB, every single run of the module (summed up at its end)
RUN_TO_FIB: list[float] = []
# How many containers test_many_containers_at_once starts (the figure is for 50; CI runs 20: each
# `docker run` costs several seconds of the emulated guest's CPU)
BULK = int(os.environ.get("IBGP_DOCKER_BULK", "20"))


@pytest.fixture(scope="module")
def rack() -> Iterator[DockerRack]:
    root = guest_tmp()
    engine = DockerEngine(root)
    rack = DockerRack(uuid.uuid4().hex[:4], engine, root)
    started = time.monotonic()
    try:
        engine.start()
        print(f"dockerd up in {engine.started_in:.1f} s")
        engine.build_image()
        rack.up()
        engine.docker("network", "create", "-d", "ipvlan", "-o", f"parent={rack.uplinks[0]}", "-o", "ipvlan_mode=l3",
                      "--subnet", "10.1.100.0/24", "--ipv6", "--subnet", "2001:db8:100::/64", L3)
        engine.docker("network", "create", "-d", "ipvlan", "-o", f"parent={rack.uplinks[1]}", "-o",
                      "ipvlan_mode=l3", "--subnet", "10.2.100.0/24", L3B)
        deadline = time.monotonic() + 120
        while "in sync with gobgpd" not in rack.agent_log_text() or not sessions_up(rack):
            assert rack.agent is not None and rack.agent.poll() is None, rack.agent_log_text()[-3000:]
            assert time.monotonic() < deadline, f"rack not ready:\n{rack.agent_log_text()[-3000:]}"
            time.sleep(0.2)
        print(f"docker rack ready in {time.monotonic() - started:.1f} s")
        yield rack
    finally:
        if RUN_TO_FIB:
            print(f"docker run returned -> /32 in the ToR FIB, one at a time, all tests: {summary(RUN_TO_FIB)}")
        print(f"--- agent log (tail) ---\n{rack.agent_log_text()[-4000:] if rack.agent_log.exists() else ''}")
        engine.docker("rm", "-f", *engine.docker("ps", "-aq", check=False).stdout.split(), check=False)
        rack.down()
        engine.stop()
        sh("umount", "-l", str(engine.exec_root / "netns"), check=False)


def sessions_up(rack: DockerRack) -> bool:
    assert rack.tor is not None
    try:
        peers = rack.tor.bgp_summary().get("ipv4Unicast", {}).get("peers", {})
    except RuntimeError:
        return False
    v6 = rack.tor.bgp_summary().get("ipv6Unicast", {}).get("peers", {})
    return all(peers.get(p, {}).get("state") == "Established" for p in ("192.0.2.1", "192.0.2.5")) \
        and v6.get("2001:db8:ff::1", {}).get("state") == "Established"


@pytest.fixture
async def tor_fib(rack: DockerRack) -> AsyncIterator[FibWatch]:
    watch = await FibWatch(Path("/run/netns") / rack.tor_ns).start()
    try:
        yield watch
    finally:
        await watch.stop()


def cleanup(rack: DockerRack, *names: str) -> None:
    rack.engine.docker("rm", "-f", *names, check=False)


async def run_and_wait(rack: DockerRack, fib: FibWatch, name: str, network: str, *options: str) -> tuple[str, float]:
    """`docker run`, then wait for the container's /32 in the ToR FIB via the right link; returns (address,
    seconds from `docker run` returning to the route in the FIB)."""
    called = time.monotonic()
    rack.engine.run(name, network, *options)
    returned = time.monotonic()
    address = rack.engine.address(name, network)
    arrived = await fib.wait_for(f"{address}/32")
    assert fib.routes[f"{address}/32"] == (GATEWAY[network],)
    RUN_TO_FIB.append(arrived - returned)
    print(f"docker run {name}: {returned - called:.1f} s; returned -> /32 in the ToR FIB {arrived - returned:.3f} s")
    return address, arrived - returned


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    return (f"n={len(ordered)}: median {statistics.median(ordered) * 1e3:.0f} ms, worst {ordered[-1] * 1e3:.0f} ms")


async def test_fixed_and_ipam_assigned_addresses_reach_the_tor(rack: DockerRack, tor_fib: FibWatch) -> None:
    names = ["fix3", "auto3", "fix3b", "auto3b"]
    samples = []
    try:
        for name, network, options in (("fix3", L3, ["--ip", "10.1.100.10"]), ("auto3", L3, []),
                                       ("fix3b", L3B, ["--ip", "10.2.100.10"]), ("auto3b", L3B, [])):
            address, took = await run_and_wait(rack, tor_fib, name, network, *options)
            samples.append(took)
            if name.startswith("fix"):
                assert address.endswith(".10")
            assert rack.ping(address), f"the ToR cannot reach {name} at {address}"
        for aggregate in AGGREGATE.values():  # networks supplied by Docker, not configured: aggregates too
            await tor_fib.wait_for(aggregate)
        await tor_fib.wait_for("2001:db8:100::/64")
        for family in ("-4", "-6"):  # for the README's walk-through
            shown = sh("ip", "-n", rack.tor_ns, family, "route", "show", "proto", "bgp").stdout
            print(f"tor$ ip {family} route show proto bgp\n{shown}")
        print(f"docker run returned -> /32 in the ToR FIB, {summary(samples)}")
    finally:
        cleanup(rack, *names)
    for aggregate in AGGREGATE.values():  # the last container gone: the aggregates go too
        await tor_fib.wait_for(aggregate, present=False)


async def test_ipv6_network_reaches_the_tor(rack: DockerRack, tor_fib: FibWatch) -> None:
    """`docker network create --ipv6`: each container's /128 and the network's /64 in the ToR FIB, ping6."""
    try:
        v4, _ = await run_and_wait(rack, tor_fib, "dual", L3)
        v6 = rack.engine.address("dual", L3, family=6)
        assert v6.startswith("2001:db8:100:"), v6
        fixed = "2001:db8:100::66"
        called = time.monotonic()
        rack.engine.run("dual6", L3, "--ip6", fixed)
        returned = time.monotonic()
        for address in (v6, fixed):
            arrived = await tor_fib.wait_for(f"{address}/128")
            print(f"{address}/128 via {tor_fib.routes[f'{address}/128']}, {arrived - returned:.2f} s after "
                  f"`docker run dual6` returned ({returned - called:.1f} s after it was called)")
            assert rack.ping(address), f"the ToR cannot ping6 {address}"
        await tor_fib.wait_for("2001:db8:100::/64")
        assert rack.ping(v4)
    finally:
        cleanup(rack, "dual", "dual6")
    await tor_fib.wait_for("2001:db8:100::/64", present=False)


async def test_stop_start_restart_kill_rm(rack: DockerRack, tor_fib: FibWatch) -> None:
    prefix = "10.1.100.20/32"
    try:
        await run_and_wait(rack, tor_fib, "life", L3, "--ip", "10.1.100.20")
        for verb, present in (("stop", False), ("start", True), ("restart", True), ("kill", False),
                              ("start", True)):
            mark = time.monotonic()
            rack.engine.docker(verb, "life")
            await tor_fib.wait_for(prefix, present=present)
            if verb == "restart":  # a new sandbox: the old /32 goes with the old namespace, then comes back
                await eventually(lambda: prefix in tor_fib.routes, what="the /32 after restart")
            if present:
                assert rack.ping("10.1.100.20"), f"unreachable after docker {verb}"
            print(f"docker {verb}: {len(tor_fib.withdrawals({prefix}, since=mark))} withdrawal(s) at the ToR")
    finally:
        cleanup(rack, "life")
    await tor_fib.wait_for(prefix, present=False)


async def test_network_connect_and_disconnect_of_a_running_container(rack: DockerRack, tor_fib: FibWatch) -> None:
    """Disconnect a running container from its ipvlan network, connect it again with another address. (Docker
    20.10 cannot connect a second L3 ipvlan network to a running container: each sets a default route, the
    second fails with "error setting interface ... routes to [0.0.0.0/0]: file exists".)"""
    try:
        stay, _ = await run_and_wait(rack, tor_fib, "stay", L3)
        first, _ = await run_and_wait(rack, tor_fib, "multi", L3B, "--ip", "10.2.100.76")
        mark = time.monotonic()
        rack.engine.docker("network", "disconnect", L3B, "multi")
        await tor_fib.wait_for(f"{first}/32", present=False)
        assert not rack.ping(first)
        rack.engine.docker("network", "connect", "--ip", "10.2.100.77", L3B, "multi")
        await tor_fib.wait_for("10.2.100.77/32")
        assert tor_fib.routes["10.2.100.77/32"] == (GATEWAY[L3B],)
        assert rack.ping("10.2.100.77")
        assert rack.engine.docker("inspect", "-f", "{{.State.Running}} {{.RestartCount}}", "multi").stdout.split() \
            == ["true", "0"]  # the same running container throughout
        assert tor_fib.withdrawals({f"{stay}/32"}, since=mark) == []  # the other container's route stayed
        assert rack.ping(stay)
    finally:
        cleanup(rack, "multi", "stay")
    await tor_fib.wait_for("10.2.100.77/32", present=False)


async def test_many_containers_at_once(rack: DockerRack, tor_fib: FibWatch) -> None:
    names = [f"bulk{i}" for i in range(BULK)]
    returned: dict[str, float] = {}

    clients = asyncio.Semaphore(4)  # more at once only queue in the guest's 2 emulated CPUs (and memory)

    async def one(name: str) -> None:
        async with clients:
            await run_one(name)

    async def run_one(name: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            DOCKER, "-H", f"unix://{rack.engine.socket}", "run", "-d", "--name", name, "--net", L3,
            "--security-opt", "apparmor=unconfined", IMAGE, *IDLE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        returned[name] = time.monotonic()
        assert proc.returncode == 0, err.decode()

    started = time.monotonic()
    try:
        await asyncio.gather(*(one(n) for n in names))
        print(f"{BULK} x docker run (4 at a time) returned after {time.monotonic() - started:.1f} s")
        addresses = {}
        for name in names:
            addresses[name] = rack.engine.address(name, L3)
        assert len(set(addresses.values())) == BULK
        for address in addresses.values():
            await tor_fib.wait_for(f"{address}/32", timeout=180)
        print(f"all {BULK} /32s in the ToR FIB {time.monotonic() - started:.1f} s after the first docker run")
        samples = [next(e.at for e in tor_fib.events if e.added and e.prefix == f"{addresses[n]}/32") - returned[n]
                   for n in names]
        print(f"docker run returned -> /32 in the ToR FIB ({BULK} at once), {summary(samples)}")
        unreachable = [a for a in addresses.values() if not rack.ping(a)]
        assert unreachable == [], f"the ToR cannot reach {unreachable}"
    finally:
        cleanup(rack, *names)
    for address in addresses.values():
        await tor_fib.wait_for(f"{address}/32", present=False, timeout=180)


def community_at_tor(rack: DockerRack, prefix: str) -> list[str]:
    assert rack.tor is not None
    data = json.loads(rack.tor.vtysh(f"show ip bgp {prefix} json") or "{}")
    return [c for p in data.get("paths", []) for c in (p.get("community") or {}).get("string", "").split()]


async def test_ipam_ownership_labels_and_refusals(rack: DockerRack, tor_fib: FibWatch) -> None:
    names = ["rogue", "quiet", "tagged", "witness"]
    try:
        # A container with CAP_NET_ADMIN takes an address Docker never gave it: refused.
        rogue, _ = await run_and_wait(rack, tor_fib, "rogue", L3, "--cap-add", "NET_ADMIN")
        rack.engine.docker("exec", "rogue", "ip", "addr", "add", "10.1.100.200/24", "dev", "eth0")
        # Opted out by label: Docker assigned it, the operator asked not to advertise it.
        rack.engine.run("quiet", L3, "--ip", "10.1.100.201", "--label", "ipvlan-bgp.advertise=false")
        # Extra communities from labels, only those the network allows (65001:200 yes, 65001:666 no).
        tagged, _ = await run_and_wait(rack, tor_fib, "tagged", L3, "--label",
                                       "ipvlan-bgp.communities=65001:200,65001:666")
        await eventually(lambda: "refused 10.1.100.200/32" in rack.agent_log_text()
                         and "refused 10.1.100.201/32" in rack.agent_log_text(), timeout=60,
                         what="the agent to report both refusals")
        witness, _ = await run_and_wait(rack, tor_fib, "witness", L3)  # a pass after both refusals
        assert "10.1.100.200/32" not in tor_fib.routes and "10.1.100.201/32" not in tor_fib.routes
        # (The ToR still reaches 10.1.100.200 through the network's aggregate: ipvlan delivers to the slave
        # that holds the address. What ownership refuses is the /32 that would pull it to this host.)
        log = rack.agent_log_text()
        assert "(container rogue): inside a Docker network, not assigned by Docker" in log
        assert "refused 10.1.100.201/32 from" in log and "(container quiet): its container opted out" in log
        assert "65001:666 is not allowed on network l3net" in log
        status = await query(rack.workdir / "agent.sock", "status")
        refused = status["prefixes"]["refused"]
        assert "10.1.100.200/32" in refused["not_assigned_by_docker"] and "10.1.100.201/32" in refused["opted_out"]
        assert "65001:200" in community_at_tor(rack, f"{tagged}/32")
        assert "65001:666" not in community_at_tor(rack, f"{tagged}/32")
        for address in (rogue, tagged, witness):
            assert rack.ping(address)
        refusals = [line for line in log.splitlines() if "refused 10." in line]
        print("refused by IPAM ownership:\n  " + "\n  ".join(line.split("] ")[-1] for line in refusals))
    finally:
        cleanup(rack, *names)


async def test_dockerd_restart_without_live_restore(rack: DockerRack, tor_fib: FibWatch) -> None:
    """Containers stop with dockerd (their routes go: netlink says so), `--restart always` brings them back."""
    prefixes = {"10.1.100.40/32", "10.2.100.40/32"}
    try:
        await run_and_wait(rack, tor_fib, "pol1", L3, "--ip", "10.1.100.40", "--restart", "always")
        await run_and_wait(rack, tor_fib, "pol2", L3B, "--ip", "10.2.100.40", "--restart", "always")
        lost_before = rack.agent_log_text().count("unreachable")
        started = time.monotonic()
        rack.engine.stop()
        for prefix in prefixes:
            await tor_fib.wait_for(prefix, present=False)
        rack.engine.start(live_restore=False)
        for prefix in prefixes:
            await tor_fib.wait_for(prefix, timeout=120)
        print(f"dockerd restart (no live-restore): routes back {time.monotonic() - started:.1f} s after the stop")
        assert rack.ping("10.1.100.40") and rack.ping("10.2.100.40")
        assert rack.agent_log_text().count("unreachable") - lost_before <= 1  # logged once per outage
    finally:
        cleanup(rack, "pol1", "pol2")


async def test_dockerd_restart_with_live_restore_withdraws_nothing(rack: DockerRack, tor_fib: FibWatch) -> None:
    rack.engine.restart(live_restore=True)
    prefixes = {"10.1.100.50/32", "10.2.100.50/32", "10.1.100.0/24", "10.2.100.0/24"}
    try:
        await run_and_wait(rack, tor_fib, "lr1", L3, "--ip", "10.1.100.50")
        await run_and_wait(rack, tor_fib, "lr2", L3B, "--ip", "10.2.100.50")
        log_before = len(rack.agent_log_text())
        mark = time.monotonic()
        rack.engine.stop()
        await eventually(lambda: "unreachable" in rack.agent_log_text()[log_before:], timeout=60,
                         what="the agent to notice Docker is gone")
        await asyncio.sleep(3)  # Docker away for a while: the agent keeps what it has
        assert rack.ping("10.1.100.50") and rack.ping("10.2.100.50")
        rack.engine.start(live_restore=True)
        await eventually(lambda: "Docker at" in rack.agent_log_text()[log_before:].split("unreachable", 1)[-1],
                         timeout=60, what="the agent to reconnect to Docker")
        back, _ = await run_and_wait(rack, tor_fib, "lr3", L3)  # caught up: a new container is advertised
        assert tor_fib.withdrawals(prefixes, since=mark) == []
        assert rack.ping("10.1.100.50") and rack.ping("10.2.100.50") and rack.ping(back)
        outage = rack.agent_log_text()[log_before:]
        assert outage.count("unreachable") == 1, outage
    finally:
        cleanup(rack, "lr1", "lr2", "lr3")
