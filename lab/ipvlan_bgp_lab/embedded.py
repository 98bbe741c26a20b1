"""The embedded lab: a containerlab topology realised with network namespaces and veth pairs.

Nodes become namespaces (``<prefix><node>``), links veth pairs, each node's ``exec`` lines run inside its
namespace; an FRR node runs zebra + bgpd, a host node runs gobgpd and the agent with the files it binds.
Namespaces the exec lines create (the ipvlan containers) are recorded and removed on ``down``.
State lives in ``STATE_ROOT/<lab name>/state.json``, so ``up``, ``status`` and ``down`` can be separate runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .frr import FrrRouter
from .netns import enter
from .topology import AGENT_CONF, FRR_CONF, GOBGPD_CONF, Topology

STATE_ROOT = Path(os.environ.get("IBGP_LAB_STATE", "/run/ipvlan-bgp-lab"))
NETNS_DIR = Path("/run/netns")


class LabError(RuntimeError):
    pass


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    out = subprocess.run(argv, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {out.stderr.strip()}")
    return out


def in_netns(netns: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*enter(netns), "sh", "-c", command], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise LabError(f"[{netns}] {command}: {out.stderr.strip() or out.stdout.strip()}")
    return out


@dataclass
class LabState:
    name: str
    topology: str
    prefix: str
    namespaces: list[str] = field(default_factory=list)  # node namespaces
    containers: list[str] = field(default_factory=list)  # namespaces created by exec lines
    pids: dict[str, int] = field(default_factory=dict)  # process label -> pid
    api: dict[str, str] = field(default_factory=dict)  # host node -> gobgpd API target (inside its netns)

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}{node}"


def state_dir(name: str) -> Path:
    return STATE_ROOT / name


def load_state(name: str) -> LabState | None:
    path = state_dir(name) / "state.json"
    if not path.exists():
        return None
    return LabState(**json.loads(path.read_text()))


def save_state(state: LabState) -> None:
    directory = state_dir(state.name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").write_text(json.dumps(asdict(state), indent=2))


def _namespaces() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


class EmbeddedLab:
    def __init__(self, topology: Topology, prefix: str | None = None, gobgpd: str = "gobgpd") -> None:
        self.topology = topology
        self.gobgpd = gobgpd  # the binary hosts run: a copy lets a test replace it, as a package upgrade does
        self.state = load_state(topology.name) or LabState(
            topology.name, str(topology.path), prefix or f"{topology.name}-")
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # started by this process: reaped on down
        self.routers = {n.name: FrrRouter(self.state.node_ns(n.name), n.binds[FRR_CONF],
                                          state_dir(topology.name) / n.name) for n in topology.by_role("router")}

    def up(self, progress: Any = print) -> LabState:
        if self.state.namespaces:
            raise LabError(f"lab {self.topology.name} is already up (ipvlan-bgp-lab down first)")
        state = self.state
        save_state(state)
        try:
            for node in self.topology.nodes.values():
                ns = state.node_ns(node.name)
                ip("netns", "add", ns)
                state.namespaces.append(ns)
                ip("link", "set", "lo", "up", netns=ns)
            save_state(state)
            for i, link in enumerate(self.topology.links):
                a_tmp, b_tmp = f"lab{os.getpid() % 1000}a{i}", f"lab{os.getpid() % 1000}b{i}"
                (a_node, a_if), (b_node, b_if) = link.a, link.b
                ip("link", "add", a_tmp, "netns", state.node_ns(a_node), "type", "veth", "peer", "name", b_tmp,
                   "netns", state.node_ns(b_node))
                ip("link", "set", a_tmp, "name", a_if, netns=state.node_ns(a_node))
                ip("link", "set", b_tmp, "name", b_if, netns=state.node_ns(b_node))
            progress(f"{len(state.namespaces)} nodes, {len(self.topology.links)} links")
            for node in self.topology.nodes.values():
                before = _namespaces()
                for line in node.exec:
                    in_netns(state.node_ns(node.name), line)
                state.containers += sorted(_namespaces() - before - set(state.namespaces))
                save_state(state)
            progress(f"{len(state.containers)} containers: {', '.join(state.containers)}")
            for name in self.routers:
                self._start_router(name)
                save_state(state)
            for node in self.topology.by_role("host"):
                self._start(node.name, "gobgpd")
                self._start(node.name, "agent")
            save_state(state)
            progress("FRR, gobgpd and agents started")
        except BaseException:
            self.down()
            raise
        return state

    def _start_router(self, node: str) -> None:
        for daemon, proc in zip(("zebra", "bgpd"), self.routers[node].start(), strict=True):
            self._track(f"{node}/{daemon}", proc)

    def _track(self, label: str, proc: subprocess.Popen[bytes]) -> None:
        self.state.pids[label] = proc.pid
        self._procs[label] = proc

    def _stop(self, label: str, sig: int) -> None:
        pid = self.state.pids.pop(label, 0)
        _kill(pid, sig)
        proc = self._procs.pop(label, None)
        if proc is None:  # started by another invocation (`lab up` earlier): not our child to reap
            _wait_gone(pid)
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            _kill(pid, signal.SIGKILL)
            proc.wait()

    def _start(self, node: str, what: str) -> None:
        """Start ``gobgpd`` or ``agent`` in a host node's namespace with the files the node binds."""
        spec = self.topology.nodes[node]
        ns = self.state.node_ns(node)
        workdir = state_dir(self.topology.name) / node
        workdir.mkdir(parents=True, exist_ok=True)
        agent_conf = spec.binds[AGENT_CONF]
        target = tomllib.loads(agent_conf.read_text()).get("gobgp", {}).get("target", "127.0.0.1:50051")
        self.state.api[node] = target
        if what == "gobgpd":
            # Also a unix socket, so tools in any namespace (benchmarks, tests) can reach this gobgpd's API.
            unix = workdir / "gobgpd.sock"
            unix.unlink(missing_ok=True)  # a killed gobgpd leaves it behind, and the next one cannot bind
            hosts = f"{target},unix://{unix}"
            command = [self.gobgpd, "-f", str(spec.binds[GOBGPD_CONF]), "--api-hosts", hosts, "--pprof-disable", "-r"]
        else:
            command = [sys.executable, "-m", "agent.cli", "run", str(agent_conf)]
        with (workdir / f"{what}.log").open("ab") as log:
            proc = subprocess.Popen([*enter(ns), *command], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self._track(f"{node}/{what}", proc)

    def gobgp_api(self, node: str) -> str:
        """A gRPC target for the host node's gobgpd that works from any namespace."""
        return f"unix:{state_dir(self.topology.name) / node / 'gobgpd.sock'}"

    def stop_process(self, label: str, sig: int) -> None:
        """Stop one host process (``host1/gobgpd``, ``host1/agent``) with ``sig``; ``start_process`` brings it back."""
        self._stop(label, sig)
        save_state(self.state)

    def start_process(self, label: str) -> None:
        node, _, what = label.partition("/")
        self._start(node, what)
        save_state(self.state)

    def restart(self, label: str, sig: int = signal.SIGKILL) -> None:
        """Kill one lab process (``host1/gobgpd``, ``host1/agent``, ``tor/bgpd``...) and start it again."""
        node, _, what = label.partition("/")
        # A router restarts whole: bgpd does not survive losing its zebra cleanly.
        labels = [f"{node}/zebra", f"{node}/bgpd"] if node in self.routers else [label]
        for each in labels:
            self._stop(each, sig)
        if node in self.routers:
            self._start_router(node)
        else:
            self._start(node, what)
        save_state(self.state)

    def down(self) -> None:
        state = self.state
        for label in list(state.pids):
            self._stop(label, signal.SIGTERM)
        for ns in state.containers + state.namespaces:
            ip("netns", "del", ns, check=False)
        shutil.rmtree(state_dir(state.name), ignore_errors=True)
        self.state = LabState(state.name, state.topology, state.prefix)


def _kill(pid: int, sig: int) -> None:
    if pid <= 0:
        return
    try:
        os.killpg(pid, sig)  # the process group: `ip netns exec` and what it runs
    except ProcessLookupError:
        return


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    _kill(pid, signal.SIGKILL)
