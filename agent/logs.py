"""Logging: one line per meaningful event, as text or JSON.

Under journald (JOURNAL_STREAM set) the text format drops the timestamp, which the journal records already,
and starts each line with its sd-daemon priority prefix (``<3>`` error ... ``<7>`` debug), which journald
turns into the entry's PRIORITY, so ``journalctl -p warning`` finds warnings. Call sites pass structured
fields with ``extra={...}`` (names in ``FIELDS``); the JSON format carries them, the text format keeps its
messages unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

# The structured fields a call site may pass with extra=; only these reach the JSON output.
FIELDS = ("prefix", "sources", "first_prefix", "last_prefix", "count", "namespace", "interface", "peer",
          "state", "reason", "path", "uplinks", "error_kind")

# sd-daemon(3) priorities: syslog levels.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def journal_priority(levelno: int) -> int:
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


def source_fields(sources: tuple[str, ...] | list[str]) -> dict[str, object]:
    """Log fields for the sources of a prefix (endpoint labels ``namespace:ifname``, or ``network P``):
    ``sources``, plus ``namespace`` and ``interface`` when a single endpoint claims it."""
    found: dict[str, object] = {"sources": list(sources)}
    if len(sources) == 1 and not sources[0].startswith("network ") and ":" in sources[0]:
        # an interface name never holds ':' (the kernel refuses it), a namespace path may
        found["namespace"], _, found["interface"] = sources[0].rpartition(":")
    return found


def fields_of(record: logging.LogRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


class JsonFormatter(logging.Formatter):
    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in fields_of(record).items():
            entry[name] = value if isinstance(value, int | float | bool | str | None) else _jsonable(value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        line = json.dumps(entry)
        return f"<{journal_priority(record.levelno)}>{line}" if self.journald else line


def _jsonable(value: object) -> object:
    if isinstance(value, list | tuple | set | frozenset):
        return [str(v) for v in value]
    return str(value)


class JournalFormatter(logging.Formatter):
    """Text lines with the sd-daemon priority prefix; a multi-line record (a traceback) gets it on each line."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def formatter_for(fmt: str, journald: bool) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(journald=journald)
    if journald:
        return JournalFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(fmt, journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("asyncio").setLevel(max(logging.WARNING, root.level))
