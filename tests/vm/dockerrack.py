"""A Docker host wired to an FRR ToR, inside the VM: the real Docker engine (Debian's docker.io), gobgpd and the
agent in the guest's own namespace, the ToR (zebra + bgpd) in a namespace of its own.

    ToR netns (FRR, AS 65000)                        guest root namespace (AS 65001), an IPv6 session on up0
      eth1 192.0.2.2/30 2001:db8:ff::2/64  ── veth ── <up0> 192.0.2.1/30 2001:db8:ff::1/64  parent of the L3 network
      eth2 192.0.2.6/30                    ── veth ── <up1> 192.0.2.5/30                    parent of the 2nd L3 network
                                                      dockerd (tmpfs data root), gobgpd, agent

Docker keeps one ipvlan network per parent, so the second network has a parent (and a BGP session) of its own; the
ToR takes 10.1/16 only from the first session and 10.2/16 only from the second, so each /32 points at the
link its container is on. dockerd's data root is a tmpfs (the shared root is read-only); no registry is
reachable, so the image is a busybox rootfs made here and loaded with `docker import`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ipvlan_bgp_lab.frr import FrrRouter
from ipvlan_bgp_lab.gobgpd import Gobgpd
from ipvlan_bgp_lab.netns import enter

DOCKER = "/usr/bin/docker"  # Debian's CLI, the one that matches its dockerd
DOCKERD = "/usr/sbin/dockerd"
IMAGE = "ibgp-busybox:latest"
# PID 1 gets no default signal handlers: trap TERM so `docker stop` does not wait for its kill timeout.
IDLE = ["sh", "-c", "trap 'exit 0' TERM; sleep 1000000 & wait"]
OWNER = "65001:4242:9"


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out


class DockerEngine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.exec_root = root / "exec"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0

    @property
    def netns_dir(self) -> Path:
        return self.exec_root / "netns"

    def start(self, live_restore: bool = False, timeout: float = 120) -> None:
        if not Path("/sys/fs/cgroup/cgroup.controllers").exists():  # a bare guest may have no cgroup2 mounted
            sh("mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup", check=False)
        argv = [DOCKERD, "--data-root", str(self.root / "data"), "--exec-root", str(self.exec_root),
                "--host", f"unix://{self.socket}", "--pidfile", str(self.root / "docker.pid"),
                "--storage-driver=vfs", "--bridge=none", "--iptables=false", "--ip6tables=false"]
        if live_restore:
            argv.append("--live-restore")
        started = time.monotonic()
        with (self.root / "dockerd.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"dockerd did not come up:\n{self.log_tail()}")
            time.sleep(0.2)
        self.started_in = time.monotonic() - started
        # dockerd makes its netns directory only for its first sandbox; the agent's inotify watch needs it
        # before that (a missing directory is picked up by the periodic rescan only). Made once dockerd is up:
        # made before, dockerd exited at start in one run.
        self.netns_dir.mkdir(mode=0o755, exist_ok=True)

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, live_restore: bool) -> None:
        self.stop()
        self.start(live_restore)

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return sh(DOCKER, "-H", f"unix://{self.socket}", *args, check=check, timeout=timeout)

    def build_image(self) -> None:
        rootfs = self.root / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
        sh(str(rootfs / "bin" / "busybox"), "--install", "-s", str(rootfs / "bin"))
        # busybox --install links to the absolute path it ran from: point them inside the image instead.
        for link in (rootfs / "bin").iterdir():
            if link.is_symlink():
                link.unlink()
                link.symlink_to("busybox")
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run([DOCKER, "-H", f"unix://{self.socket}", "import", "-", IMAGE],
                                      stdin=tar.stdout, capture_output=True, text=True, timeout=120)
        if imported.returncode != 0:
            raise RuntimeError(f"docker import: {imported.stderr}")

    def run(self, name: str, network: str, *options: str) -> str:
        """`docker run -d`; returns the container id once the command returned."""
        out = self.docker("run", "-d", "--name", name, "--net", network, "--security-opt", "apparmor=unconfined",
                          *options, IMAGE, *IDLE)
        return out.stdout.strip()

    def address(self, name: str, network: str, family: int = 4) -> str:
        key = "IPAddress" if family == 4 else "GlobalIPv6Address"
        out = self.docker("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{network}\").{key}}}}}", name)
        return out.stdout.strip()


TOR_FRR = """frr defaults datacenter
hostname dtor
ip forwarding
ipv6 forwarding
!
router bgp 65000
 bgp router-id 10.255.255.1
 neighbor 192.0.2.1 remote-as 65001
 neighbor 192.0.2.1 timers connect 1
 neighbor 192.0.2.5 remote-as 65001
 neighbor 192.0.2.5 timers connect 1
 neighbor 2001:db8:ff::1 remote-as 65001
 neighbor 2001:db8:ff::1 timers connect 1
 !
 address-family ipv4 unicast
  neighbor 192.0.2.1 prefix-list from-l3 in
  neighbor 192.0.2.5 prefix-list from-l3b in
  no neighbor 2001:db8:ff::1 activate
 exit-address-family
 !
 address-family ipv6 unicast
  neighbor 2001:db8:ff::1 activate
  neighbor 2001:db8:ff::1 prefix-list from-l3-v6 in
 exit-address-family
!
ip prefix-list from-l3 seq 10 permit 10.1.0.0/16 le 32
ip prefix-list from-l3b seq 10 permit 10.2.0.0/16 le 32
ipv6 prefix-list from-l3-v6 seq 10 permit 2001:db8:100::/48 le 128
!
line vty
!
"""

GOBGPD = """[global.config]
  as = 65001
  router-id = "192.0.2.1"
  port = -1
{neighbors}
"""

NEIGHBOR = """
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{address}"
    peer-as = 65000
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "{family}"
"""


class DockerRack:
    """The ToR, its links, gobgpd and the agent; Docker runs beside them (DockerEngine)."""

    def __init__(self, tag: str, engine: DockerEngine, workdir: Path) -> None:
        self.tag = tag
        self.engine = engine
        self.workdir = workdir
        self.tor_ns = f"dtor{tag}"
        self.uplinks = (f"up0{tag}", f"up1{tag}")
        self.gobgpd: Gobgpd | None = None
        self.tor: FrrRouter | None = None
        self.tor_procs: list[subprocess.Popen[bytes]] = []
        self.agent: subprocess.Popen[bytes] | None = None

    @property
    def agent_log(self) -> Path:
        return self.workdir / "agent.log"

    def up(self) -> None:
        sh("ip", "netns", "add", self.tor_ns)
        sh("ip", "-n", self.tor_ns, "link", "set", "lo", "up")
        for i, (here, there, mine, its) in enumerate(((self.uplinks[0], "eth1", "192.0.2.1/30", "192.0.2.2/30"),
                                                      (self.uplinks[1], "eth2", "192.0.2.5/30", "192.0.2.6/30"))):
            sh("ip", "link", "add", here, "type", "veth", "peer", "name", f"t{i}{self.tag}", "netns", self.tor_ns)
            sh("ip", "-n", self.tor_ns, "link", "set", f"t{i}{self.tag}", "name", there)
            sh("ip", "addr", "add", mine, "dev", here)
            sh("ip", "-n", self.tor_ns, "addr", "add", its, "dev", there)
            sh("ip", "link", "set", here, "up")
            sh("ip", "-n", self.tor_ns, "link", "set", there, "up")
        sh("ip", "-6", "addr", "add", "2001:db8:ff::1/64", "dev", self.uplinks[0], "nodad")
        sh("ip", "-n", self.tor_ns, "-6", "addr", "add", "2001:db8:ff::2/64", "dev", "eth1", "nodad")
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):  # as on any Docker host
            sh("sysctl", "-qw", f"{key}=1")
        sh("ip", "link", "set", "lo", "up")
        conf = self.workdir / "frr.conf"
        conf.write_text(TOR_FRR)
        self.tor = FrrRouter(self.tor_ns, conf, self.workdir / "tor")
        self.tor_procs = self.tor.start()
        neighbors = "".join(NEIGHBOR.format(address=address, family=family) for address, family in (
            ("192.0.2.2", "ipv4-unicast"), ("192.0.2.6", "ipv4-unicast"), ("2001:db8:ff::2", "ipv6-unicast")))
        self.gobgpd = Gobgpd(GOBGPD.format(neighbors=neighbors), self.workdir / "gobgpd").start()
        self.start_agent()

    def agent_config(self) -> str:
        return f"""uplinks = ["{self.uplinks[0]}", "{self.uplinks[1]}"]
ownership_community = "{OWNER}"
netns_dirs = ["{self.engine.netns_dir}"]
[gobgp]
target = "{self.gobgpd.target if self.gobgpd else ''}"
[status]
socket = "{self.workdir / 'agent.sock'}"
[metrics]
listen = ""
[dampening]
enabled = false
[docker]
enabled = true
socket = "{self.engine.socket}"
allowed_supernets = ["10.0.0.0/8", "2001:db8::/32"]
[[docker.networks]]
name = "l3net"
allowed_communities = ["65001:200"]
"""

    def start_agent(self) -> None:
        config = self.workdir / "agent.toml"
        config.write_text(self.agent_config())
        with self.agent_log.open("ab") as log:
            self.agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", str(config)], stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def agent_log_text(self) -> str:
        return self.agent_log.read_text(errors="replace")

    def ping(self, address: str) -> bool:
        flag = "-6" if ":" in address else "-4"
        return subprocess.run([*enter(self.tor_ns), "ping", flag, "-c", "1", "-W", "2", address],
                              capture_output=True).returncode == 0

    def down(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
        if self.gobgpd is not None:
            self.gobgpd.stop()
        for proc in self.tor_procs:
            with_kill(proc)
        sh("ip", "netns", "del", self.tor_ns, check=False)
        for link in self.uplinks:
            sh("ip", "link", "del", link, check=False)


def with_kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def guest_tmp() -> Path:
    base = Path(os.environ.get("IBGP_GUEST_TMP", "/tmp"))
    root = Path(tempfile.mkdtemp(prefix="docker-", dir=base))
    root.chmod(0o755)  # FRR's daemons run as user frr and need to reach their workdir inside
    return root
