"""An FRR router (zebra + bgpd) in a network namespace, with its own sockets, pid files and logs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .netns import enter

FRR_BIN = Path("/usr/lib/frr")


class FrrRouter:
    def __init__(self, netns: str, config: Path, workdir: Path) -> None:
        self.netns = netns
        self.config = config
        self.workdir = workdir

    @property
    def zserv(self) -> Path:
        return self.workdir / "zserv.api"

    def start(self) -> list[subprocess.Popen[bytes]]:
        """Start zebra, then bgpd; returns their processes (in that order)."""
        if not (FRR_BIN / "bgpd").exists():
            raise RuntimeError("FRR is not installed: apt-get install frr")
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.workdir, "frr", "frr")
        conf = self.workdir / "frr.conf"
        shutil.copy(self.config, conf)
        shutil.chown(conf, "frr", "frr")
        procs: list[subprocess.Popen[bytes]] = []
        common = ["-u", "frr", "-g", "frr", "-z", str(self.zserv), "--vty_socket", str(self.workdir), "-f", str(conf)]
        for daemon in ("zebra", "bgpd"):
            extra = ["-A", "127.0.0.1"] if daemon == "bgpd" else []
            argv = [*enter(self.netns), str(FRR_BIN / daemon), *common, *extra,
                    "-i", str(self.workdir / f"{daemon}.pid")]
            with (self.workdir / f"{daemon}.log").open("ab") as log:
                procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            if daemon == "zebra":
                _wait_for(self.zserv, procs[-1])
        return procs

    def vtysh(self, command: str) -> str:
        out = subprocess.run(["vtysh", "--vty_socket", str(self.workdir), "-c", command],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"vtysh {command!r}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def bgp_table(self) -> dict[str, Any]:
        """Paths by prefix, IPv4 and IPv6 unicast."""
        routes: dict[str, Any] = {}
        for family in ("ipv4", "ipv6"):
            data: dict[str, Any] = json.loads(self.vtysh(f"show bgp {family} unicast json") or "{}")
            routes.update(data.get("routes", {}))
        return routes

    def bgp_summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.vtysh("show bgp summary json") or "{}")
        return data


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)
