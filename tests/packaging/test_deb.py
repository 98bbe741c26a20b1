"""The .deb: built with debhelper from a copy of this tree, lintian-clean, checked from a throwaway root.

It is never installed on this machine: `dpkg -x` unpacks it into a temporary directory, and the installed
paths (/opt/ipvlan-bgp-agent) are bind-mounted in a private mount namespace to run the agent from there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import _SOURCE_IGNORE, REPO, run

pytestmark = pytest.mark.packaging

VENV = "/opt/ipvlan-bgp-agent"
DEBIAN_GOBGPD_UNIT = Path("/lib/systemd/system/gobgpd.service")
TOOLS = ("dh", "dpkg-deb", "dpkg-checkbuilddeps", "lintian", "help2man", "systemd-analyze", "unshare")


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Debian packaging tools missing: {', '.join(missing)} (make deps installs them)")
    work = tmp_path_factory.mktemp("deb")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=_SOURCE_IGNORE, symlinks=True)
    run("dpkg-checkbuilddeps", cwd=source)
    run(source / "debian" / "rules", "binary", f"WHEEL_PYTHON={sys.executable}", "WHEEL_FLAGS=--no-build-isolation",
        f"DEB_DESTDIR={work}", cwd=source)
    (built,) = work.glob("ipvlan-bgp-agent_*.deb")
    return built


@pytest.fixture(scope="module")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("root")
    run("dpkg-deb", "-x", deb, tree)
    return tree


def in_installed_paths(root: Path, *command: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command that sees root's /opt/ipvlan-bgp-agent at its real path (private mount namespace)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    script = (f'mount -t tmpfs ibgp-opt /opt && mkdir {VENV} && mount --bind "$0"{VENV} {VENV} && exec "$@"')
    # Outside the checkout, so that `python -c` cannot import the source tree's agent package instead.
    return run("unshare", "--mount", "--propagation", "private", "sh", "-c", script, root, *command, cwd=root,
               check=False)


def test_lintian_is_clean(deb: Path) -> None:
    result = run("lintian", "--fail-on", "error,warning", deb, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    tags = [line for line in result.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert not tags, tags


def test_control_depends_on_gobgpd_and_nothing_from_golang(deb: Path) -> None:
    depends = run("dpkg-deb", "-f", deb, "Depends").stdout
    assert re.search(r"\bgobgpd\b", depends), depends
    assert "golang" not in depends
    assert re.search(r"\bpython3\.\d+\b", depends), "the venv needs the python3.X it was built with"


def test_config_is_a_conffile_and_services_are_never_started(deb: Path, tmp_path: Path) -> None:
    run("dpkg-deb", "-e", deb, tmp_path / "control")
    assert (tmp_path / "control" / "conffiles").read_text().split() == ["/etc/ipvlan-bgp/agent.toml"]
    for script in ("postinst", "prerm", "postrm"):
        run("sh", "-n", tmp_path / "control" / script)
    postinst = (tmp_path / "control" / "postinst").read_text()
    assert "daemon-reload" in postinst and "daemon-reload" in (tmp_path / "control" / "postrm").read_text()
    commands = "\n".join(line for line in postinst.splitlines()
                          if not line.strip().startswith(("#", '"', "echo")))  # the hint for the admin is text
    starts = r"deb-systemd-invoke (start|restart|\$_dh_action)|systemctl (--system )?(start|restart|enable)"
    assert not re.search(starts, commands), "installing must not start the agent on its example config"
    # dh_installsystemd --no-enable: it re-enables only a unit that an earlier version installed and the admin
    # enabled (first installs are not "debian-installed"); without the option it enables on first install.
    if "deb-systemd-helper enable" in commands:
        assert "deb-systemd-helper debian-installed" in commands


def test_files_land_where_the_units_expect_them(root: Path) -> None:
    unit = (root / "lib/systemd/system/ipvlan-bgp-agent.service").read_text()
    for path in re.findall(r"^(?:ExecStartPre|ExecStart)=(\S+)", unit, re.MULTILINE):
        assert (root / path.lstrip("/")).is_file(), path
    for doc in re.findall(r"^Documentation=file://(\S+)", unit, re.MULTILINE):
        assert (root / doc.lstrip("/")).is_file(), f"Documentation= names {doc}, not in the package"
    assert os.readlink(root / "usr/bin/ipvlan-bgp") == f"{VENV}/bin/ipvlan-bgp"
    assert (root / "lib/systemd/system/gobgpd.service.d/ipvlan-bgp.conf").is_file()
    assert not (root / "lib/systemd/system/gobgpd.service").exists(), "Debian's gobgpd owns its unit"
    assert (root / "usr/share/man/man1/ipvlan-bgp.1.gz").is_file()
    completion = root / "usr/share/bash-completion/completions/ipvlan-bgp"
    assert "complete -o bashdefault -F _shtab_ipvlan_bgp ipvlan-bgp" in completion.read_text()
    assert (root / "usr/share/zsh/vendor-completions/_ipvlan-bgp").read_text().startswith("#compdef ipvlan-bgp")
    examples = root / "usr/share/doc/ipvlan-bgp-agent/examples"
    assert {p.name for p in examples.iterdir()} >= {"gobgpd.toml", "gobgpd-dual-tor.toml", "alerts.yml",
                                                    "ipvlan-bgp.json"}


def test_nothing_names_the_build_directory(root: Path, deb: Path) -> None:
    build_dir = str(deb.parent / "src")
    hits = run("grep", "-rlI", "--", build_dir, root, check=False).stdout.split()
    assert not hits, hits


def test_agent_runs_from_the_installed_path(root: Path) -> None:
    version = in_installed_paths(root, f"{VENV}/bin/ipvlan-bgp", "--version")
    assert version.returncode == 0 and version.stdout.startswith("ipvlan-bgp-agent "), version
    validated = in_installed_paths(root, f"{VENV}/bin/ipvlan-bgp", "validate", root / "etc/ipvlan-bgp/agent.toml")
    assert validated.returncode == 0 and "OK" in validated.stdout, validated
    stubs = in_installed_paths(root, f"{VENV}/bin/python", "-c", "import agent.gobgp, agent.gobgpapi as s; "
                               "print(s.__file__)")
    assert stubs.returncode == 0 and stubs.stdout.startswith(f"{VENV}/"), stubs


def test_agent_unit_verifies(root: Path) -> None:
    unit = root / "lib/systemd/system/ipvlan-bgp-agent.service"
    result = in_installed_paths(root, "systemd-analyze", "verify", unit)
    assert result.returncode == 0, result
    assert "ipvlan-bgp-agent.service" not in result.stderr, result.stderr


def _effective(unit: str, drop_in: str, key: str) -> list[str]:
    """A key's values after systemd's drop-in rule: an empty assignment clears the list."""
    values: list[str] = []
    for line in (unit + "\n" + drop_in).splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            values = [] if not value.strip() else [*values, value.strip()]
    return values


@pytest.mark.skipif(not DEBIAN_GOBGPD_UNIT.exists(), reason="Debian's gobgpd package is not installed")
def test_gobgpd_drop_in_on_debians_unit(root: Path, tmp_path: Path) -> None:
    drop_in = root / "lib/systemd/system/gobgpd.service.d/ipvlan-bgp.conf"
    units = tmp_path / "units"
    (units / "gobgpd.service.d").mkdir(parents=True)
    shutil.copy(DEBIAN_GOBGPD_UNIT, units)
    shutil.copy(drop_in, units / "gobgpd.service.d")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    verified = subprocess.run(["systemd-analyze", "verify", str(units / "gobgpd.service")], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    assert verified.returncode == 0, verified
    assert "ipvlan-bgp.conf" not in verified.stderr, verified.stderr  # no unknown keys or bad values in ours

    debian, ours = DEBIAN_GOBGPD_UNIT.read_text(), drop_in.read_text()
    (exec_start,) = _effective(debian, ours, "ExecStart")
    argv = exec_start.split()
    assert argv[0] == "/usr/bin/gobgpd"
    assert argv[argv.index("-f") + 1] == "/etc/gobgpd/gobgpd.toml"
    assert argv[argv.index("--api-hosts") + 1] == "127.0.0.1:50051"
    assert "--sdnotify" in argv and "-r" in argv
    assert _effective(debian, ours, "ConditionPathExists") == ["/etc/gobgpd/gobgpd.toml"]
    assert "Type=notify" in debian, "the drop-in relies on Debian's Type=notify unit"


@pytest.mark.parametrize("example", ["config/gobgpd.toml", "config/examples/gobgpd-dual-tor.toml"])
def test_shipped_gobgpd_configs_pass_gobgpd_dry_run(example: str) -> None:
    gobgpd = shutil.which("gobgpd")
    if gobgpd is None:
        pytest.skip("gobgpd is not installed")
    run(gobgpd, "-f", REPO / example, "-t", "toml", "--dry-run")
