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
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

from . import repo_root
from .embedded import EmbeddedLab
from .status import containers, fib, host_paths, host_prefix, neighbor_of, ping
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
    router = lab.topology.by_role("router")[0].name
    wanted = containers(lab)
    names = neighbor_of(lab, router)
    print(f"\nwaiting for {router}'s FIB to have a route to each of {len(wanted)} container addresses ...",
          flush=True)
    took = wait_for_routes(lab, router, {host_prefix(c.address) for c in wanted}, timeout)
    print(f"  all there {took:.1f} s after the agents started\n")

    print(f"{router}: BGP routes in its kernel FIB (ip -4/-6 route show proto bgp)")
    for prefix, hops in sorted(fib(lab, router).items(), key=lambda item: _network_order(item[0])):
        via = ", ".join(f"{hop} ({names.get(hop, '?')})" for hop in hops)
        print(f"  {prefix:<22} via {via}")
    for host in lab.topology.by_role("host"):
        print(f"\n{host.name}: paths in its gobgpd (gobgp global rib -a ipv4 / ipv6)")
        print("  " + "  ".join(host_paths(lab, host.name)))
    ok = True
    for source in (n.name for n in lab.topology.by_role("plain")):
        print(f"\nping from {source}:")
        for container in wanted:
            result = ping(lab, source, container.address)
            ok &= result.ok
            rtt = f"{result.rtt_ms:.2f} ms" if result.rtt_ms is not None else "no reply"
            print(f"  {container.address:<18} ({container.netns} on {container.host}): "
                  f"{'ok' if result.ok else 'FAILED'} {rtt}")
    return ok


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
