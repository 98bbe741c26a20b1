"""The vm tier plugin's verdicts, with the VM replaced by a stand-in that writes the guest's results file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vm import plugin

pytest_plugins = ["pytester"]

VM_TEST = """
import pytest

pytestmark = pytest.mark.vm


def test_in_guest():
    pass
"""


def fake_guest(rc: int) -> Callable[[list[str], Path, float], int]:
    """run_in_guest as if the guest's pytest reported every test passed and then exited ``rc``."""

    def run_in_guest(argv: list[str], outdir: Path, timeout: float) -> int:
        results = Path(next(a for a in argv if a.startswith("IBGP_VM_RESULTS=")).partition("=")[2])
        nodeids = [a for a in argv if "::" in a]
        results.write_text(json.dumps({n: {"nodeid": n, "outcome": "passed", "when": "call", "longrepr": ""}
                                       for n in nodeids}))
        return rc

    return run_in_guest


@pytest.fixture
def session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    vm: needs ipvlan\n")
    pytester.makeconftest('pytest_plugins = ["tests.vm.plugin"]\n')
    pytester.makepyfile(test_guest=VM_TEST)
    monkeypatch.delenv("IBGP_IN_VM", raising=False)
    monkeypatch.delenv("IBGP_VM_REQUIRED", raising=False)
    return pytester


def test_guest_exit_code_fails_the_session_when_every_test_passed(session: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "run_in_guest", fake_guest(0))
    session.runpytest_inprocess("--vm=vm").assert_outcomes(passed=1)
    assert session.runpytest_inprocess("--vm=vm").ret == 0  # control: a clean guest passes
    monkeypatch.setattr(plugin, "run_in_guest", fake_guest(2))  # e.g. a collection error in the guest
    result = session.runpytest_inprocess("--vm=vm")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*guest's pytest exited 2*"])


def test_required_vm_tier_cannot_be_skipped(session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "run_in_guest", fake_guest(0))
    assert session.runpytest_inprocess("--vm=off").ret == 0  # without the requirement: skipped, exit 0
    monkeypatch.setenv("IBGP_VM_REQUIRED", "1")
    off = session.runpytest_inprocess("--vm=off")
    off.assert_outcomes(skipped=1)
    assert off.ret == pytest.ExitCode.TESTS_FAILED
    off.stdout.fnmatch_lines(["*IBGP_VM_REQUIRED=1 but no vm test passed*"])
    assert session.runpytest_inprocess("--vm=vm").ret == 0
    assert session.runpytest_inprocess("--vm=vm", "-m", "not vm").ret != 0
