"""Log formats: journald priority prefixes, JSON with the structured fields the call sites pass."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon import running
from agent.logs import JsonFormatter, formatter_for, journal_priority, setup_logging, source_fields

from ..fakes import FakeDiscovery, FakeGobgp
from .test_daemon_fake import OWNER, agent_config, endpoint


def record(level: int, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("agent.test", level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


@pytest.mark.parametrize(("level", "priority"), [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                                                 (logging.INFO, 6), (logging.DEBUG, 7)])
def test_journald_text_lines_carry_the_sd_daemon_priority(level: int, priority: int) -> None:
    assert journal_priority(level) == priority
    line = formatter_for("text", journald=True).format(record(level, "advertised %s", "10.1.0.2/32"))
    assert line == f"<{priority}>{logging.getLevelName(level)} agent.test: advertised 10.1.0.2/32"


def test_journald_prefixes_every_line_of_a_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("agent.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter_for("text", journald=True).format(rec).split("\n")
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_text_without_journald_has_no_prefix_and_keeps_the_message() -> None:
    line = formatter_for("text", journald=False).format(record(logging.WARNING, "refused %s", "10.9.0.1/32",
                                                               prefix="10.9.0.1/32"))
    assert not line.startswith("<") and line.endswith("WARNING agent.test: refused 10.9.0.1/32")


def test_json_carries_the_structured_fields() -> None:
    entry = json.loads(JsonFormatter().format(record(
        logging.INFO, "advertised %s", "10.1.0.2/32", prefix="10.1.0.2/32", count=3, sources=("a:b",),
        unrelated="not a field")))
    assert entry["msg"] == "advertised 10.1.0.2/32" and entry["level"] == "info"
    assert entry["prefix"] == "10.1.0.2/32" and entry["count"] == 3 and entry["sources"] == ["a:b"]
    assert "unrelated" not in entry
    journal = JsonFormatter(journald=True).format(record(logging.WARNING, "x"))
    assert journal.startswith("<4>{") and json.loads(journal[3:])["level"] == "warning"


def test_source_fields_split_a_single_endpoint_label() -> None:
    assert source_fields(["/run/netns/c1:eth0"]) == {"sources": ["/run/netns/c1:eth0"],
                                                     "namespace": "/run/netns/c1", "interface": "eth0"}
    assert source_fields(["network 2001:db8::/64"]) == {"sources": ["network 2001:db8::/64"]}
    assert source_fields(["a:x", "b:y"]) == {"sources": ["a:x", "b:y"]}


async def test_daemon_logs_advertised_and_refused_with_fields(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16", "10.9.0.1/16")])
    async with running(agent_config(tmp_path), speaker=fake, discovery=discovery):
        pass
    entries = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    advertised = next(e for e in entries if e["msg"].startswith("advertised 10.1.0.2/32"))
    assert advertised["prefix"] == "10.1.0.2/32"
    assert advertised["namespace"] == "/run/netns/c1" and advertised["interface"] == "eth0"
    refused = next(e for e in entries if e["msg"].startswith("refused 10.9.0.1/32"))
    assert refused["reason"] == "outside_networks" and refused["interface"] == "eth0"
    assert ipaddress.ip_network(refused["prefix"]) == ipaddress.ip_network("10.9.0.1/32")


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_text_has_a_timestamp_outside_journald(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("info", "text")
    logging.getLogger("agent.test").warning("path %s refused", "10.1.100.2/32")
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING agent.test: path 10.1.100.2/32 refused", line)


@pytest.mark.usefixtures("restore_root_logger")
def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("error", "text")
    logging.getLogger("agent.test").warning("not shown")
    assert capsys.readouterr().err == ""
