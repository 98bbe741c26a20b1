"""Network namespaces as Docker makes them: a file bind-mounted onto a fresh namespace (`unshare --net=FILE`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path


def create_netns(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True, capture_output=True, text=True)
    return path


def delete_netns(path: Path) -> None:
    """Unmount (every stacked mount, lazily if busy) and remove a namespace file."""
    for _ in range(8):
        umounted = subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode == 0
        if not umounted and subprocess.run(["umount", "-l", str(path)], capture_output=True).returncode != 0:
            break
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def enter(netns: str | Path) -> list[str]:
    """Command prefix that runs a program in a network namespace (a name under /run/netns, or a path).

    nsenter, not `ip netns exec`: the latter also unshares the mount namespace, so a namespace that the
    program creates with `ip netns add` would be mounted where nobody else can see it.
    """
    path = netns if "/" in str(netns) else f"/run/netns/{netns}"
    return ["nsenter", f"--net={path}"]


def run_in(path: Path | None, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside the namespace at ``path`` (None: here)."""
    prefix = enter(path) if path is not None else []
    out = subprocess.run([*prefix, *argv], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} (in {path or 'this namespace'}) failed: {out.stderr.strip()}")
    return out
