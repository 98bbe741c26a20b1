"""Run a command inside a throw-away QEMU VM booted on Debian's stock kernel (which has ipvlan).

The kernels of our dev and CI machines have no ipvlan, dummy or vrf module, so the ``vm`` test tier runs in a
guest started with virtme-ng (``vng``), which shares the host filesystem read-only.  Results travel back through a
``--rwdir`` folder: ``guest.log`` (stdout+stderr of the command), ``guest.rc`` (its exit code) and whatever the
command writes there; ``console.log`` holds the VM console.

    python -m ipvlan_bgp_lab.vm --prepare            # install and cache everything (CI set-up step)
    python -m ipvlan_bgp_lab.vm -- CMD [ARG ...]     # run CMD in the guest, cwd = repo root

Environment: ``IBGP_VM_CACHE`` (default ``/opt/ipvlan-bgp-vm``; not under /var/cache, the guest hides it),
``IBGP_VM_MEMORY`` (default ``2G``), ``IBGP_VM_CPUS`` (default ``2``), ``IBGP_VM_KERNEL`` (the kernel package, see
KERNEL_PACKAGE).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import repo_root

APT_PACKAGES = ("qemu-system-x86", "kmod", "busybox-static", "python3-venv")
VIRTME_NG = "virtme-ng==1.42"
GUEST_MODULES = ("ipvlan", "dummy", "veth")
# The guest sees the host's root over 9p without caching: every import is a round trip to the host (`import
# pyroute2` took 70 s under load).  The standard library and site-packages get their own 9p mount with
# cache=loose (18 s).  Not the repo: the loose cache can serve torn files (NUL bytes) when one is edited meanwhile.
CACHED_TREES = sorted({Path(p) for k, p in sysconfig.get_paths().items() if k in ("stdlib", "purelib", "platlib")})


class GuestError(RuntimeError):
    """The VM did not hand back an exit code (boot failure, crash or timeout)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("IBGP_VM_CACHE", "/opt/ipvlan-bgp-vm"))


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def sbin(name: str) -> str:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or name


def _missing_apt_packages() -> list[str]:
    missing = []
    for pkg in APT_PACKAGES:
        query = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg], capture_output=True, text=True)
        if query.stdout != "installed":
            missing.append(pkg)
    return missing


def _apt_install(packages: list[str]) -> None:
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    try:
        _run(cmd)
    except RuntimeError:  # stale or absent package lists (fresh CI machine)
        _run(["apt-get", "update", "-qq"])
        _run(cmd)


# The kernel the VM boots, pinned: the docs' figures ran on it, and linux-image-amd64 moves with every
# Debian point release (6.1.0-56 -> -57 while this was written). The cache is keyed by it, so changing the pin
# downloads the new one. IBGP_VM_KERNEL overrides it (an ABI package name, as `apt-cache policy` lists).
KERNEL_PACKAGE = "linux-image-6.1.0-56-amd64"


def _kernel_package() -> str:
    return os.environ.get("IBGP_VM_KERNEL", KERNEL_PACKAGE)


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _find_kernel(kernel_dir: Path) -> Path | None:
    images = sorted((kernel_dir / "boot").glob("vmlinuz-*"))
    return images[0] if images else None


def ensure_assets(cache_dir: Path | None = None) -> Path:
    """Install what the VM needs (apt packages, virtme-ng, a Debian kernel); return the kernel image path.

    Idempotent: each step is skipped when its result is already in place.  Needs root on the first run.
    """
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    with _locked(cache_dir):
        if missing := _missing_apt_packages():
            _apt_install(missing)

        venv = cache_dir / "venv"
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            _run(["/usr/bin/python3", "-m", "venv", str(venv)])
            _run([str(venv / "bin" / "pip"), "install", "-q", VIRTME_NG])
            (venv / ".complete").touch()

        package = _kernel_package()
        kernel_dir = cache_dir / f"kernel-{package}"
        if _find_kernel(kernel_dir) is None:
            # The deb is unpacked, not installed: lib/modules/<version> sits next to boot/vmlinuz-<version>.
            with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
                try:
                    _run(["apt-get", "download", package], cwd=Path(tmp))
                except RuntimeError:  # not in the package lists yet (fresh machine), or gone from the archive
                    _run(["apt-get", "update", "-qq"])
                    _run(["apt-get", "download", package], cwd=Path(tmp))
                (deb,) = Path(tmp).glob("*.deb")
                _run(["dpkg-deb", "-x", str(deb), f"{tmp}/kernel"])
                # The deb ships no modules.dep; without it modprobe in the guest finds nothing.  (virtme-ng
                # would run depmod itself on the first boot, writing into the cache: do it once here.)
                (version,) = (p.name for p in Path(tmp, "kernel", "lib", "modules").iterdir())
                _run([sbin("depmod"), "-a", "-b", f"{tmp}/kernel", version])
                shutil.rmtree(kernel_dir, ignore_errors=True)
                os.rename(f"{tmp}/kernel", kernel_dir)

        kernel = _find_kernel(kernel_dir)
        assert kernel is not None
        return kernel


def _guest_script(argv: list[str], trees: list[Path]) -> str:
    return f"""#!/bin/bash
# Generated by ipvlan_bgp_lab/vm.py: runs inside the VM.
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export IBGP_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 IBGP_VM_KERNEL={shlex.quote(_kernel_package())}
modprobe -a {" ".join(GUEST_MODULES)}
# 9p (the shared host filesystem) refuses unix sockets: tests put them on this tmpfs.
IBGP_GUEST_TMP=$(mktemp -d /tmp/ibgp-guest.XXXXXX)
mount -t tmpfs tmpfs "$IBGP_GUEST_TMP"
export IBGP_GUEST_TMP
# The repo is read-only in the guest: send tools that write next to it to the tmpfs.
export HYPOTHESIS_STORAGE_DIRECTORY="$IBGP_GUEST_TMP/.hypothesis"
mkdir -p /run/netns
# See CACHED_TREES; same files either way.
for tree in {shlex.join(map(str, trees))}; do
  tag=$(awk -v d="$tree" '$2 == d && $3 == "9p" {{print $1}}' /proc/mounts | tail -n 1)
  umount "$tree" && mount -t 9p -o ro,trans=virtio,version=9p2000.L,access=any,cache=loose,msize=524288 \\
    "$tag" "$tree" || echo "guest: $tree stays uncached" >&2
done
cd {shlex.quote(str(repo_root()))}
echo "guest: $(uname -r), preamble done at $(cut -d' ' -f1 /proc/uptime)s uptime"
set +e
{shlex.join(argv)}
rc=$?
echo "guest: command exited $rc at $(cut -d' ' -f1 /proc/uptime)s uptime"
exit $rc
"""


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"


def run_in_guest(argv: list[str], outdir: Path, timeout: float, cache_dir: Path | None = None) -> int:
    """Boot the VM once, run ``argv`` in it (cwd = repo root) and return its exit code.

    ``outdir`` is shared read-write with the guest; it receives guest.sh, guest.log, guest.rc and console.log.
    Raises GuestError (with the tail of console.log) when no exit code comes back.
    """
    kernel = ensure_assets(cache_dir)
    vng = kernel.parents[2] / "venv" / "bin" / "vng"
    outdir = outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    script, log, rc_file, console = (outdir / n for n in ("guest.sh", "guest.log", "guest.rc", "console.log"))
    rc_file.unlink(missing_ok=True)
    trees = [t for t in CACHED_TREES if t.is_dir() and not outdir.is_relative_to(t)]  # remounts must not hide outdir
    script.write_text(_guest_script(argv, trees))
    exec_cmd = f"bash {shlex.quote(str(script))} > {shlex.quote(str(log))} 2>&1; echo $? > {shlex.quote(str(rc_file))}"
    cmd = [
        str(vng), "--verbose", "--disable-kvm",  # KVM is there but QEMU aborts on it ('failed to set MSR 0x10a')
        "--memory", os.environ.get("IBGP_VM_MEMORY", "2G"), "--cpus", os.environ.get("IBGP_VM_CPUS", "2"),
        "--rwdir", str(outdir), *(arg for tree in trees for arg in ("--rodir", f"{tree}={tree}")),
        "--run", str(kernel), "--exec", exec_cmd,
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{vng.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin"}
    with open(console, "wb") as out:
        # stdin must be open: virtme-ng crashes when it is closed (as in CI), so give it /dev/null.
        proc = subprocess.Popen(
            cmd,
            cwd="/",  # the guest's init starts in this directory; elsewhere it could keep a CACHED_TREES mount busy
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise GuestError(
                f"VM timed out after {timeout:.0f}s; output in {outdir}\n--- console.log tail ---\n{_tail(console)}"
            ) from None
    try:
        return int(rc_file.read_text().strip())
    except (OSError, ValueError):
        raise GuestError(
            f"no exit code from the guest (vng exited {proc.returncode}); output in {outdir}\n"
            f"--- console.log tail ---\n{_tail(console)}"
        ) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="only install and cache the VM assets")
    parser.add_argument("--cache", type=Path, default=None, help="asset cache (default: $IBGP_VM_CACHE)")
    parser.add_argument("--outdir", type=Path, default=None, help="guest output folder (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before the VM is killed")
    parser.add_argument("argv", nargs="*", help="command to run in the guest (after --)")
    args = parser.parse_args()
    started = time.monotonic()
    if args.prepare:
        print(ensure_assets(args.cache))
        print(f"prepared in {time.monotonic() - started:.1f}s", file=sys.stderr)
        return 0
    if not args.argv:
        parser.error("give --prepare or a command to run in the guest")
    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="ibgp-vm-"))
    rc = run_in_guest(args.argv, outdir, args.timeout, args.cache)
    sys.stdout.write(_tail(outdir / "guest.log", 200) + "\n")
    print(f"guest exit code {rc} after {time.monotonic() - started:.1f}s; output in {outdir}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
