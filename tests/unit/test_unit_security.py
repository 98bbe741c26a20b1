"""The shipped agent unit stays hardened: `systemd-analyze security` rates its exposure at most 3.0 ("OK")."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "config" / "ipvlan-bgp-agent.service"
LIMIT = 3.0


def test_agent_unit_exposure_is_ok() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is absent (Debian package systemd): cannot score the unit")
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert found is not None, out.stdout + out.stderr
    failing = [line for line in out.stdout.splitlines() if line.startswith("✗")]
    assert float(found.group(1)) <= LIMIT, "\n".join(failing)
