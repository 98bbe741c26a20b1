"""Start and stop a real gobgpd with its own TOML config and API port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import grpc

from agent.gobgpapi import gobgp_pb2 as api
from agent.gobgpapi import gobgp_pb2_grpc as api_grpc

from .netns import enter

GOBGPD = os.environ.get("GOBGPD", "/usr/bin/gobgpd")


class GobgpdError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def global_config(asn: int, router_id: str, listen_port: int = -1) -> str:
    return f'[global.config]\n  as = {asn}\n  router-id = "{router_id}"\n  port = {listen_port}\n'


class Gobgpd:
    """A gobgpd process. ``port`` is its gRPC API port on 127.0.0.1; BGP listening is off by default."""

    def __init__(self, config: str, workdir: Path | None = None, *, graceful_restart_flag: bool = False,
                 netns: str | None = None, api_host: str = "127.0.0.1") -> None:
        if not Path(GOBGPD).exists():
            raise GobgpdError(f"{GOBGPD} not found: apt-get install gobgpd")
        self.config = config
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="gobgpd-"))
        self._own_workdir = workdir is None
        self.graceful_restart_flag = graceful_restart_flag
        self.netns = netns
        self.api_host = api_host
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{self.api_host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "gobgpd.log"

    def start(self, timeout: float = 15.0, port: int | None = None) -> Gobgpd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or self.port or free_port()
        argv = [GOBGPD, "--api-hosts", self.target, "--pprof-disable"]
        if self.config:  # without a config gobgpd waits for one over the API (GetBgp says asn 0)
            conf = self.workdir / "gobgpd.toml"
            conf.write_text(self.config)
            argv += ["-f", str(conf), "-t", "toml"]
        if self.graceful_restart_flag:
            argv.append("-r")
        if self.netns:
            argv = [*enter(self.netns), *argv]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = api_grpc.GobgpApiStub(channel)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise GobgpdError(f"gobgpd exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    reply = stub.GetBgp(api.GetBgpRequest(), timeout=1.0)
                    if getattr(reply, "global").asn:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise GobgpdError(f"gobgpd API {self.target} not ready after {timeout} s: {self.log_tail()}")
                time.sleep(0.05)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def cli(self, *args: str) -> str:
        """Run GoBGP's own CLI against this daemon and return its stdout."""
        argv = ["gobgp", "-u", self.api_host, "-p", str(self.port), *args]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout

    def __enter__(self) -> Gobgpd:
        return self.start() if self.proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
