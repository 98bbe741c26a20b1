"""The wheel carries its GoBGP stubs and runs from a clean virtualenv; a checkout without stubs fails politely."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, run

pytestmark = pytest.mark.packaging


def test_wheel_ships_generated_stubs_and_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__.py", "gobgp_pb2.py", "gobgp_pb2_grpc.py", "attribute_pb2.py", "capability_pb2.py"):
        assert f"agent/gobgpapi/{module}" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    runtime = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert runtime and not any("grpcio-tools" in line for line in runtime), "grpcio-tools is for building only"


def test_wheel_runs_from_a_clean_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run("/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel, cwd=tmp_path)
    cli = venv / "bin" / "ipvlan-bgp"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def ipvlan_bgp(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(cli), *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    version = ipvlan_bgp("--version")
    assert version.returncode == 0 and version.stdout.startswith("ipvlan-bgp-agent "), version
    helped = ipvlan_bgp("--help")
    assert helped.returncode == 0 and "validate" in helped.stdout, helped
    validated = ipvlan_bgp("validate", REPO / "config" / "agent.toml")
    assert validated.returncode == 0 and "OK" in validated.stdout, validated
    # The stubs import from the installed wheel, and nothing needs grpcio-tools at run time.
    probe = run(venv / "bin" / "python", "-c",
                "import importlib.util, agent.gobgp, agent.gobgpapi as s; "
                "print(s.__file__); print(importlib.util.find_spec('grpc_tools'))", cwd=tmp_path)
    stub_file, grpc_tools = probe.stdout.split()
    assert stub_file.startswith(str(venv)), stub_file
    assert grpc_tools == "None"


_WITHOUT_STUBS = """
import sys
sys.modules["agent.gobgpapi"] = None  # what a checkout without `make stubs` looks like to the importer
from agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["validate", "config/agent.toml"]])
def test_cli_basics_work_without_stubs(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", _WITHOUT_STUBS, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_missing_stubs_is_one_line_naming_the_fix() -> None:
    result = subprocess.run([sys.executable, "-c", _WITHOUT_STUBS, "plan", "config/agent.toml"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "make stubs" in result.stderr, result.stderr
