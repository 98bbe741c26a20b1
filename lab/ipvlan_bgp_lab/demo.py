"""`make demo`: the reference rack on this machine, shown working end to end, then torn down.

Brings the embedded lab up, waits until the ToR's kernel FIB has a route to every container, prints the
ToR's BGP table and FIB, what each host's gobgpd holds, pings every container from the client, and takes
everything down again. Where this kernel has no ipvlan, the same runs inside the VM harness.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path

from . import repo_root
from .embedded import NETNS_DIR, EmbeddedLab
from .flows import FlowStream
from .status import Container, containers, fib, host_paths, host_prefix, neighbor_of, ping
from .topology import load_topology


def __getattr__(name: str) -> Path:
    if name == "DEFAULT_TOPOLOGY":  # resolved on use: the package itself may live outside the checkout
        return repo_root() / "containerlab" / "rack.clab.yml"
    raise AttributeError(name)


def kernel_has_ipvlan() -> bool:
    if not Path("/sys/module/ipvlan").exists():
        os.system("modprobe -q ipvlan 2>/dev/null")
    return Path("/sys/module/ipvlan").exists()


def _network_order(prefix: str) -> tuple[int, IPv4Network | IPv6Network]:
    network = ip_network(prefix)
    return (network.version, network)


def wait_for_routes(lab: EmbeddedLab, router: str, prefixes: set[str], timeout: float) -> float:
    started = time.monotonic()
    while not prefixes <= set(fib(lab, router)):
        if time.monotonic() - started > timeout:
            missing = sorted(prefixes - set(fib(lab, router)))
            raise TimeoutError(f"the ToR has no route to {', '.join(missing)} after {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def show(lab: EmbeddedLab, timeout: float = 180.0) -> bool:
    routers = [n.name for n in lab.topology.by_role("router")]
    router = routers[0]  # the ToR, or the fabric's spine
    wanted = containers(lab)
    print(f"\nwaiting for {router}'s FIB to have a route to each of {len(wanted)} container addresses ...",
          flush=True)
    took = wait_for_routes(lab, router, {host_prefix(c.address) for c in wanted}, timeout)
    print(f"  all there {took:.1f} s after the agents started\n")

    for each in routers:
        names = neighbor_of(lab, each)
        print(f"{each}: BGP routes in its kernel FIB (ip -4/-6 route show proto bgp)")
        for prefix, hops in sorted(fib(lab, each).items(), key=lambda item: _network_order(item[0])):
            via = ", ".join(f"{hop} ({names.get(hop, '?')})" for hop in hops)
            print(f"  {prefix:<22} via {via}")
        print()
    for host in lab.topology.by_role("host"):
        print(f"{host.name}: paths in its gobgpd (gobgp global rib -a ipv4 / ipv6)")
        print("  " + "  ".join(host_paths(lab, host.name)) + "\n")
    holders: dict[str, list[Container]] = {}
    for container in wanted:
        holders.setdefault(container.address, []).append(container)
    ok = True
    for source in (n.name for n in lab.topology.by_role("plain")):
        print(f"ping from {source}:")
        for address, held in holders.items():
            result = ping(lab, source, address)
            ok &= result.ok
            rtt = f"{result.rtt_ms:.2f} ms" if result.rtt_ms is not None else "no reply"
            where = ", ".join(f"{c.netns} on {c.host}" for c in held) + (": anycast" if len(held) > 1 else "")
            print(f"  {address:<18} ({where}): {'ok' if result.ok else 'FAILED'} {rtt}")
        for address, held in holders.items():
            if len(held) > 1 and ip_address(address).version == 4:
                ok &= show_spread(lab, source, address, held)
    return ok


def show_spread(lab: EmbeddedLab, source: str, address: str, held: list[Container], flows: int = 64) -> bool:
    """Where the routers' ECMP sends flows from ``source`` to an anycast address: UDP from ``flows`` source ports,
    counted in each container holding it."""
    stream = FlowStream(NETNS_DIR / lab.state.node_ns(source), address, 7900,
                        {f"{c.netns} on {c.host}": NETNS_DIR / c.netns for c in held}, flows=flows).start()
    time.sleep(3 * flows / stream.rate)  # three datagrams per flow
    stream.stop()
    shares = ", ".join(f"{len(stream.flows_of(name))} to {name}" for name in stream.receivers)
    lost = len(stream.lost())
    print(f"  {address:<18} {flows} UDP flows (source ports): {shares}; {lost} of {len(stream.sent)} datagrams "
          "lost")
    return lost == 0


def run_here(topology_path: Path) -> int:
    started = time.monotonic()
    topology = load_topology(topology_path)
    lab = EmbeddedLab(topology)
    print(f"== embedded lab '{topology.name}' from {topology_path} "
          f"(kernel {platform.release()}) ==")
    lab.up()
    try:
        ok = show(lab)
    finally:
        lab.down()
        print("\nlab down: namespaces, links and processes removed")
    print(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topology", type=Path, help="default: containerlab/rack.clab.yml of the checkout")
    parser.add_argument("--here", action="store_true", help="run on this kernel, never in the VM")
    args = parser.parse_args(argv)
    topology = (args.topology or repo_root() / "containerlab" / "rack.clab.yml").resolve()
    if args.here or kernel_has_ipvlan():
        return run_here(topology)
    from .vm import run_in_guest

    print("this kernel has no ipvlan: running the demo in a VM (virtme-ng, QEMU without KVM; ~1-2 minutes)",
          flush=True)
    outdir = Path(tempfile.mkdtemp(prefix="ibgp-demo-"))
    rc = run_in_guest([sys.executable, "-m", "ipvlan_bgp_lab.demo", "--here", "--topology", str(topology)], outdir,
                      timeout=900)
    sys.stdout.write((outdir / "guest.log").read_text(errors="replace"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
