"""Make ipvlan "containers" the way Docker's ipvlan driver does: one at a time in-process through netlink
(spawning `ip` costs ~0.75 s per endpoint in the emulated VM), or thousands at once with `ip -batch`.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from pyroute2 import AsyncIPRoute

from agent.endpoints import IpvlanMode
from agent.netns import open_netlink_in

from .netns import create_netns, delete_netns, enter

_names = itertools.count()


async def netlink_in(path: Path | None) -> AsyncIPRoute:
    """An AsyncIPRoute bound to the namespace at ``path`` (None: the caller's)."""
    sock = open_netlink_in(str(path) if path is not None else None, 1 << 20)
    return AsyncIPRoute(fileno=sock.detach())


async def ifindex(ipr: AsyncIPRoute, ifname: str) -> int:
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname}")
    return int(found[0])


async def add_ipvlan(host: AsyncIPRoute, parent: str, netns: Path, *, ifname: str = "eth0",
                     mode: IpvlanMode = IpvlanMode.L3, addresses: Iterable[str] = (), up: bool = True,
                     inside: AsyncIPRoute | None = None) -> None:
    """Create an ipvlan slave of ``parent`` (in ``host``'s namespace) directly inside ``netns``, like a
    container's eth0. Pass ``inside`` (a socket in ``netns``) to reuse it for many slaves."""
    parent_index = await ifindex(host, parent)
    # Created in the host namespace, then moved, as Docker does. The kernel keeps ONE mode per parent: adding
    # a slave in another mode switches every slave of that parent to it.
    temp = f"ipvl{next(_names)}"
    fd = os.open(netns, os.O_RDONLY)
    try:
        await host.link("add", ifname=temp, kind="ipvlan", link=parent_index, ipvlan_mode=int(mode))
        await host.link("set", index=await ifindex(host, temp), net_ns_fd=fd)
    finally:
        os.close(fd)
    own_socket = inside is None
    ipr = inside if inside is not None else await netlink_in(netns)
    try:
        index = await ifindex(ipr, temp)
        await ipr.link("set", index=index, ifname=ifname)
        for address in addresses:
            iface = ipaddress.ip_interface(address)
            await ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                           **({"flags": 0x80} if iface.version == 6 else {}))  # IFA_F_NODAD
        if up:
            await ipr.link("set", index=index, state="up")
    finally:
        if own_socket:
            ipr.close()


async def add_container(host: AsyncIPRoute, parent: str, netns: Path, addresses: Iterable[str], *,
                        mode: IpvlanMode = IpvlanMode.L3, up: bool = True) -> Path:
    create_netns(netns)
    await add_ipvlan(host, parent, netns, mode=mode, addresses=addresses, up=up)
    return netns


def populate(parent: str, netns_dir: Path, addresses: Sequence[str], per_namespace: int, *,
             mode: IpvlanMode = IpvlanMode.L3, ifname: str = "e", netns_prefix: str = "c") -> list[Path]:
    """Many endpoints at once: ``per_namespace`` ipvlan slaves of ``parent`` in each new namespace
    ``netns_dir/<netns_prefix><k>``, named ``<ifname><i>``, each up with one of ``addresses``.

    Batched through `ip -batch` (one process for the links, one per namespace for addresses): in the
    emulated VM even a netlink request from Python costs milliseconds, and 10,000 endpoints made one at a
    time took over 20 minutes. Slaves are created straight inside their namespace (IFLA_NET_NS_FD) while
    their parent stays here; the mode is the kernel's one mode for all slaves of that parent.
    """
    namespaces, links = [], []
    for start in range(0, len(addresses), per_namespace):
        ns = create_netns(netns_dir / f"{netns_prefix}{start // per_namespace}")
        namespaces.append(ns)
        links += [f"link add link {parent} name {ifname}{i} netns {ns} type ipvlan mode {mode.name.lower()}"
                  for i in range(min(per_namespace, len(addresses) - start))]
    for start in range(0, len(links), 500):  # `ip` keeps each `netns` fd open: stay under RLIMIT_NOFILE
        _ip_batch(None, links[start:start + 500])
    for k, ns in enumerate(namespaces):
        chunk = addresses[k * per_namespace:(k + 1) * per_namespace]
        _ip_batch(ns, [f"address add {a} dev {ifname}{i}\nlink set {ifname}{i} up" for i, a in enumerate(chunk)])
    return namespaces


class IpBatch:
    """A long-lived `ip -force -batch -` in a namespace: netlink changes made by another program, as Docker's
    are, for one pipe write each. Timing the agent with changes made from its own event loop would charge
    it for the caller's netlink round trip (~11 ms in the emulated VM), since it cannot run meanwhile."""

    def __init__(self, netns: Path | None) -> None:
        argv = [*(enter(netns) if netns is not None else []), "ip", "-force", "-batch", "-"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, text=True)

    def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines))
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(120)

    def __enter__(self) -> IpBatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _ip_batch(netns: Path | None, lines: list[str]) -> None:
    argv = [*(enter(netns) if netns is not None else []), "ip", "-batch", "-"]
    out = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ip -batch (in {netns or 'this namespace'}) failed: {out.stderr.strip()[:2000]}")


def remove_container(netns: Path) -> None:
    delete_netns(netns)
