"""The shipped ToR config (containerlab/tor/frr.conf) honours RFC 8326 as a receiver: FRR 8.4 in a namespace,
a host's gobgpd peering with it over a veth pair; a path carrying GRACEFUL_SHUTDOWN gets local-preference 0,
the same path without it the default, and it follows when the community comes and goes (drain, undrain)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.frr import FrrRouter
from ipvlan_bgp_lab.gobgpd import GOBGPD
from ipvlan_bgp_lab.netns import enter

from agent.drain import GRACEFUL_SHUTDOWN
from agent.gobgp import GobgpClient
from agent.model import Attributes, LargeCommunity, Route

from ..helpers import eventually

REPO = Path(__file__).resolve().parents[2]
OWNER = LargeCommunity(65001, 4242, 1)
HOST_GOBGPD = """
[global.config]
  as = 65001
  router-id = "192.0.2.1"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "192.0.2.2"
    peer-as = 65000
  [neighbors.timers.config]
    connect-retry = 1
"""

pytestmark = pytest.mark.skipif(not Path("/usr/lib/frr/bgpd").exists() or shutil.which("vtysh") is None,
                                reason="FRR is not installed")


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


@pytest.fixture
def tor_and_host(tmp_path: Path) -> Iterator[tuple[FrrRouter, str]]:
    """The ToR (FRR with the shipped config) and a host namespace running gobgpd; yields (tor, gobgpd API)."""
    tag = uuid.uuid4().hex[:6]
    tor_ns, host_ns = f"ibgp-gshut-tor-{tag}", f"ibgp-gshut-host-{tag}"
    procs: list[subprocess.Popen[bytes]] = []
    frr_dir = Path(tempfile.mkdtemp(prefix="ibgp-gshut-"))  # FRR runs as user frr: not under pytest's 0700 tmp
    frr_dir.chmod(0o755)
    try:
        for ns in (tor_ns, host_ns):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", f"gs{tag}a", "netns", tor_ns, "type", "veth", "peer", "name", f"gs{tag}b", "netns", host_ns)
        ip("-n", tor_ns, "link", "set", f"gs{tag}a", "name", "eth1")
        ip("-n", host_ns, "link", "set", f"gs{tag}b", "name", "eth1")
        for ns, address in ((tor_ns, "192.0.2.2/30"), (host_ns, "192.0.2.1/30")):
            ip("-n", ns, "addr", "add", address, "dev", "eth1")
            ip("-n", ns, "link", "set", "eth1", "up")
        tor = FrrRouter(tor_ns, REPO / "containerlab" / "tor" / "frr.conf", frr_dir / "tor")
        procs += tor.start()
        conf, api = tmp_path / "gobgpd.toml", tmp_path / "gobgpd.sock"
        conf.write_text(HOST_GOBGPD)
        with (tmp_path / "gobgpd.log").open("ab") as log:
            procs.append(subprocess.Popen([*enter(host_ns), GOBGPD, "-f", str(conf), "--api-hosts", f"unix://{api}",
                                           "--pprof-disable"], stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        yield tor, f"unix:{api}"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for ns in (tor_ns, host_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(frr_dir, ignore_errors=True)


def local_pref(tor: FrrRouter, prefix: str) -> int | None:
    try:
        paths = json.loads(tor.vtysh(f"show ip bgp {prefix} json") or "{}").get("paths", [])
    except RuntimeError:
        return None
    return int(paths[0].get("locPrf", 100)) if paths else None


@pytest.fixture
async def host_gobgpd(tor_and_host: tuple[FrrRouter, str]) -> AsyncIterator[GobgpClient]:
    async with GobgpClient(tor_and_host[1], OWNER) as client:
        await client.connect(timeout=30)
        yield client


async def test_the_tor_lowers_local_preference_for_graceful_shutdown(tor_and_host: tuple[FrrRouter, str],
                                                                    host_gobgpd: GobgpClient) -> None:
    tor = tor_and_host[0]

    def route(prefix: str, drained: bool) -> Route:
        return Route(ipaddress.ip_network(prefix), None, Attributes(
            communities=(GRACEFUL_SHUTDOWN,) if drained else (), large_communities=(OWNER,)))

    await host_gobgpd.add_paths([route("10.1.100.11/32", True), route("10.1.100.12/32", False)])
    await eventually(lambda: local_pref(tor, "10.1.100.12/32") is not None, timeout=60, what="the ToR's BGP table")
    await eventually(lambda: local_pref(tor, "10.1.100.11/32") == 0, what="local-preference 0 for 65535:0")
    assert local_pref(tor, "10.1.100.12/32") == 100
    await host_gobgpd.add_paths([route("10.1.100.11/32", False), route("10.1.100.12/32", True)])  # undrain, drain
    await eventually(lambda: (local_pref(tor, "10.1.100.11/32"), local_pref(tor, "10.1.100.12/32")) == (100, 0),
                     what="local-preference following the community")
