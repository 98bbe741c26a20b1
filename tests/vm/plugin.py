"""pytest plugin for the ``vm`` tier: tests marked ``@pytest.mark.vm`` need a kernel with ipvlan.

* In the guest (``IBGP_IN_VM`` set) vm tests run normally; if ``IBGP_VM_RESULTS`` names a file, each test's
  result is written there as JSON (``{nodeid: record}``, rewritten after every test).
* On a host whose kernel has ipvlan they run locally, as usual.
* Otherwise the first vm test boots ONE VM (lab/ipvlan_bgp_lab/vm.py) that runs pytest on all selected vm tests; every
  host-side vm item then reports the guest's result for its own nodeid (traceback, skip reason, captured output).

``--vm=MODE`` or ``IBGP_VM=MODE`` overrides the choice: ``auto`` (default), ``off`` (skip the tier, with a
reason), ``local`` (run on this host), ``vm`` (always through the VM).  ``IBGP_VM_TIMEOUT`` bounds the VM run
(default 1800 s).  ``-m 'not vm'`` deselects the tier as usual.

``IBGP_VM_REQUIRED=1`` (what .ci/run sets) makes a session in which no vm test passed fail, whatever the
reason (``IBGP_VM=off``, every vm test skipped or deselected). In every mode, a guest pytest that exits
non-zero fails the session even if every host-side item passed (a collection error in the guest).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest
from ipvlan_bgp_lab.vm import run_in_guest, sbin

if TYPE_CHECKING:
    from _pytest._io import TerminalWriter

MODES = ("auto", "off", "local", "vm")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--vm",
        choices=MODES,
        default=os.environ.get("IBGP_VM", "auto"),
        help="how to run tests marked vm: auto (default: locally if this kernel has ipvlan, else in a VM), "
        "off (skip them), local, vm. Default from $IBGP_VM.",
    )


def host_has_ipvlan() -> bool:
    if not Path("/sys/module/ipvlan").exists():
        with contextlib.suppress(OSError):  # no modprobe, or not allowed to load modules
            subprocess.run([sbin("modprobe"), "-q", "ipvlan"], capture_output=True, check=False)
    return Path("/sys/module/ipvlan").exists()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("IBGP_IN_VM"):
        if results := os.environ.get("IBGP_VM_RESULTS"):
            config.pluginmanager.register(GuestReporter(Path(results)), "ibgp-vm-guest-reporter")
        return
    mode: str = config.getoption("--vm")
    if mode not in MODES:  # a bad $IBGP_VM bypasses argparse's choices check
        raise pytest.UsageError(f"IBGP_VM={mode!r}: expected one of {', '.join(MODES)}")
    if os.environ.get("IBGP_VM_REQUIRED") == "1":
        config.pluginmanager.register(RequireVmTier(), "ibgp-vm-required")
    if mode == "off":
        config.pluginmanager.register(SkipVmTier(), "ibgp-vm-off")
    elif mode == "vm" or (mode == "auto" and not host_has_ipvlan()):
        config.pluginmanager.register(VmTier(config), "ibgp-vm-tier")


def _is_vm(item: pytest.Item) -> bool:
    return item.get_closest_marker("vm") is not None


@dataclass
class Crash:
    path: str
    lineno: int
    message: str


@dataclass
class GuestFailure:
    """A guest failure's text, shaped like pytest's own reprs so that -ra shows ``FAILED id - message``."""

    text: str
    reprcrash: Crash

    def toterminal(self, tw: TerminalWriter) -> None:
        tw.line(self.text)

    def __str__(self) -> str:
        return self.text


class GuestReporter:
    """In the guest: collect one record per test and keep the results file current."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rec = self.results.setdefault(
            report.nodeid,
            {"nodeid": report.nodeid, "outcome": "passed", "when": "call", "longrepr": "", "duration": 0.0},
        )
        rec["duration"] += report.duration
        rec["stdout"], rec["stderr"] = report.capstdout, report.capstderr  # later phases include earlier ones
        if hasattr(report, "wasxfail"):
            rec["wasxfail"] = report.wasxfail
        if report.outcome != "passed":
            text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if rec["outcome"] == "passed":
                crash = getattr(report.longrepr, "reprcrash", None)
                message = crash.message if crash else text.splitlines()[-1] if text else ""
                rec.update(outcome=report.outcome, when=report.when, longrepr=text, message=message)
            else:  # e.g. a teardown error after a failed call: keep both tracebacks
                rec["longrepr"] += f"\n\n--- {report.when} ---\n{text}"
        if report.when == "teardown":
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results, indent=1))
            tmp.replace(self.path)


class RequireVmTier:
    """IBGP_VM_REQUIRED=1: the session fails unless at least one vm test ran and passed."""

    def __init__(self) -> None:
        self.passed = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.passed and "vm" in report.keywords:
            self.passed += 1

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.passed == 0:
            _fail_session(session, "IBGP_VM_REQUIRED=1 but no vm test passed (skipped, deselected or none "
                                   "collected): the VM tier did not run")


def _fail_session(session: pytest.Session, why: str) -> None:
    if reporter := session.config.pluginmanager.get_plugin("terminalreporter"):
        reporter.write_line(f"ERROR: {why}", red=True, bold=True)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class SkipVmTier:
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        skip = pytest.mark.skip(reason="vm tier disabled (IBGP_VM=off / --vm=off)")
        for item in filter(_is_vm, items):
            item.add_marker(skip)


class VmTier:
    """On a host without ipvlan: run all selected vm tests in one VM, report each guest result on the host."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.nodeids: list[str] = []
        self.results: dict[str, dict[str, Any]] | None = None  # None until the VM has run
        self.outdir: Path | None = None
        self.summary = ""
        self.error = ""
        self.guest_rc: int | None = None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.nodeids = [item.nodeid for item in session.items if _is_vm(item)]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        if not _is_vm(item):
            return None
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        if self.results is None:
            self._run_vm()
        for report in self._reports(item):
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _say(self, line: str) -> None:
        if reporter := self.config.pluginmanager.get_plugin("terminalreporter"):
            reporter.write_line(line)

    def _run_vm(self) -> None:
        self.outdir = Path(tempfile.mkdtemp(prefix="ibgp-vm-"))
        results = self.outdir / "results.json"
        self._say(f"\nvm tier: running {len(self.nodeids)} test(s) in a VM; output in {self.outdir}")
        knobs = [f"{k}={v}" for k, v in os.environ.items() if k == "IBGP_DOCKER_BULK"]  # tests/vm/test_docker_vm.py
        argv = ["env", f"IBGP_VM_RESULTS={results}", *knobs, sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
        started = time.monotonic()
        try:
            rc = run_in_guest([*argv, "-v", *self.nodeids], self.outdir, float(os.environ.get("IBGP_VM_TIMEOUT", 1800)))
        except Exception as exc:  # any failure to run the VM fails the vm tests, with the reason
            self.error = f"the VM run failed: {exc}"
            self.results = {}
            return
        self.guest_rc = rc
        self.results = json.loads(results.read_text()) if results.exists() else {}
        self.summary = (
            f"vm tier: {len(self.nodeids)} test(s) ran in a VM in {time.monotonic() - started:.0f}s, "
            f"guest pytest exit code {rc}; output in {self.outdir}"
        )

    def _reports(self, item: pytest.Item) -> list[pytest.TestReport]:
        """setup/call/teardown reports for ``item``, the guest's outcome placed in the phase where it happened."""
        assert self.results is not None and self.outdir is not None
        rec = self.results.get(item.nodeid)
        if rec is None:
            guest_log = self.outdir / "guest.log"
            tail = "\n".join(guest_log.read_text(errors="replace").splitlines()[-40:]) if guest_log.exists() else ""
            why = self.error or f"no result from the VM for this test; see {guest_log}"
            rec = {"outcome": "failed", "when": "call", "longrepr": f"{why}\n--- guest.log tail ---\n{tail}"}
            rec["message"] = why.splitlines()[0]
        outcome, when, longrepr = rec["outcome"], rec["when"], rec["longrepr"]
        if outcome == "skipped" and "wasxfail" not in rec:
            longrepr = (str(item.path), (item.location[1] or 0) + 1, longrepr)  # the form -rs expects
        elif outcome == "failed":
            text = f"{longrepr}\n\n(this test ran in the VM; guest output in {self.outdir})"
            longrepr = GuestFailure(text, Crash(str(item.path), item.location[1] or 0, rec.get("message", "")))
        keywords: dict[str, Literal[1]] = dict.fromkeys(item.keywords, 1)
        reports = []
        for phase in ("setup", "call", "teardown"):
            if phase == when:
                extra = {"wasxfail": rec["wasxfail"]} if "wasxfail" in rec else {}
                sections = [
                    (f"Captured {name} {phase} (guest)", rec[name]) for name in ("stdout", "stderr") if rec.get(name)
                ]
                duration = rec.get("duration", 0.0)
                reports.append(
                    pytest.TestReport(
                        item.nodeid, item.location, keywords, outcome, longrepr, phase, sections, duration, **extra
                    )
                )
            elif not (phase == "call" and when == "setup"):  # pytest skips "call" when setup did not pass
                reports.append(pytest.TestReport(item.nodeid, item.location, keywords, "passed", None, phase))
        return reports

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.guest_rc not in (None, 0):
            _fail_session(session, f"the guest's pytest exited {self.guest_rc} (a collection or internal "
                                   f"error there fails the run even if every test reported passed); see {self.outdir}")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.error or self.summary:
            terminalreporter.write_line(self.error.splitlines()[0] if self.error else self.summary)
