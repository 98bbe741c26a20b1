"""The agent stands alone: it imports neither the lab nor the lab's dependencies, and the lab finds the
checkout it needs or says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ipvlan_bgp_lab import REPO_ENV, RepoNotFound, repo_root
from ipvlan_bgp_lab.cli import main as lab_main

REPO = Path(__file__).resolve().parents[2]


def test_the_agent_imports_neither_the_lab_nor_its_dependencies() -> None:
    code = ("import sys, agent.cli, agent.daemon, agent.wiring; "
            "print(sorted(m for m in ('ipvlan_bgp_lab', 'pyroute2', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_the_lab_finds_the_checkout_from_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPO_ENV, raising=False)
    monkeypatch.chdir(REPO / "containerlab")
    assert repo_root() == REPO


def test_the_lab_says_clearly_when_it_cannot_find_the_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(REPO_ENV, str(tmp_path))
    with pytest.raises(RepoNotFound, match="not an ipvlan-bgp-agent checkout"):
        repo_root()
    assert lab_main(["status"]) == 1
    assert "not an ipvlan-bgp-agent checkout" in capsys.readouterr().err
