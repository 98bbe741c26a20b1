"""Packaging tier: builds the wheel and the .deb from this checkout and checks them from the outside."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What a wheel build needs from the checkout; the generated stubs (agent/gobgpapi) are left behind on purpose:
# the build itself must produce them.
_SOURCE_IGNORE = shutil.ignore_patterns(".venv", ".git", "gobgpapi", "build", "*.egg-info", "__pycache__",
                                        ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", ".lab",
                                        ".vm-cache", "results", "dist")


def run(*args: str | Path, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the checkout without stubs, offline, with the dev venv's build tools."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=_SOURCE_IGNORE, symlinks=True)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w", work / "dist", source,
        cwd=work)
    (built,) = (work / "dist").glob("ipvlan_bgp_agent-*.whl")
    return built
