"""Log formats: text with a timestamp, text without one under journald (JOURNAL_STREAM), JSON lines."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from agent.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def log_line(capsys: pytest.CaptureFixture[str], **setup: str) -> str:
    setup_logging(**setup)
    logging.getLogger("agent.test").warning("path %s refused", "10.1.100.2/32")
    (line,) = capsys.readouterr().err.splitlines()
    return line


def test_text_has_a_timestamp(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    line = log_line(capsys, level="info", fmt="text")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING agent.test: path 10.1.100.2/32 refused", line)


def test_journald_text_leaves_the_timestamp_to_the_journal(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert log_line(capsys, level="info", fmt="text") == "WARNING agent.test: path 10.1.100.2/32 refused"


def test_json_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")  # JSON wins over journald's text format
    setup_logging("info", "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("agent.test").exception("pass %d failed", 3)
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert (entry["level"], entry["logger"], entry["msg"]) == ("error", "agent.test", "pass 3 failed")
    assert "ValueError: boom" in entry["error"]


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("error", "text")
    logging.getLogger("agent.test").warning("not shown")
    assert capsys.readouterr().err == ""
