"""`make install` from a source tree, into overlays of /etc, /usr and /opt in a private mount namespace.

The overlays' upper directories catch every write, so this machine's real root is never touched.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import _SOURCE_IGNORE, REPO, run

pytestmark = pytest.mark.packaging

_IN_OVERLAYS = """
set -e
for d in etc usr opt; do
  mkdir -p "$0/$d/upper" "$0/$d/work"
  mount -t overlay "ibgp-$d" -o "lowerdir=/$d,upperdir=$0/$d/upper,workdir=$0/$d/work" "/$d"
done
make -C "$1" install VENV="$2" -o "$2/.installed"
/usr/local/bin/ipvlan-bgp --version
/usr/local/bin/ipvlan-bgp validate /etc/ipvlan-bgp/agent.toml
SYSTEMD_UNIT_PATH=/etc/systemd/system:/lib/systemd/system: systemd-analyze verify \
  /etc/systemd/system/ipvlan-bgp-agent.service
"""


def test_make_install_uses_the_drop_in_and_runs(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("systemd-analyze") is None:
        pytest.skip("needs root, unshare and systemd-analyze")
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=_SOURCE_IGNORE, symlinks=True)
    layers = tmp_path / "layers"
    layers.mkdir()
    venv = Path(sys.executable).parent.parent  # the dev venv builds the wheel (its build tools, offline)
    result = run("unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_OVERLAYS, layers, source, venv,
                 cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ipvlan-bgp-agent " in result.stdout and "OK" in result.stdout
    assert "ipvlan-bgp-agent.service" not in result.stderr, result.stderr  # systemd-analyze found nothing

    etc = layers / "etc" / "upper"
    assert (etc / "systemd/system/gobgpd.service.d/ipvlan-bgp.conf").is_file()
    assert not (etc / "systemd/system/gobgpd.service").exists(), "Debian's gobgpd unit must stay in charge"
    unit = (etc / "systemd/system/ipvlan-bgp-agent.service").read_text()
    assert "ExecStart=/opt/ipvlan-bgp-agent/bin/ipvlan-bgp run" in unit
    assert (layers / "usr/upper/share/doc/ipvlan-bgp-agent/README.md").is_file()  # the unit's Documentation=
    assert (layers / "opt/upper/ipvlan-bgp-agent/bin/ipvlan-bgp").is_file()
