"""Logging for ``serve`` and the command line: text or JSON lines on stderr.

``setup(level, fmt)`` installs one handler on the root logger (called again, it replaces
it), so that uvicorn's, the server's and the replication's records all come out in one
format:

- ``text``: ``2026-01-02T03:04:05.678Z INFO stigmem_node.access: message``.
- ``json``: one object per line with ``time`` (RFC 3339, UTC), ``level``, ``event`` (a
  stable snake_case name, see ``EVENTS``), ``logger``, ``message``, the request fields
  ``request_id``, ``peer``, ``route``, ``status``, ``duration_ms`` (``null`` where a
  record has none) and whatever else the record was given with ``extra=``
  (``log.info(..., extra={"event": "pull_summary", "peer": ...})``).

A record never carries a secret: callers log an API key by its key id (its prefix) only,
and never a token, private key or pepper.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
ACCESS_LOG_MODES = ("off", "errors", "all")
REQUEST_FIELDS = ("request_id", "peer", "route", "status", "duration_ms")
QUIET_LOGGERS = ("httpx", "httpcore")

# The events a log line may carry; a record without one is ``log``.
EVENTS = {
    "log": "any other record (uvicorn's start and stop lines, warnings, errors)",
    "node_started": "serve is listening",
    "http_request": "one request answered (the access log)",
    "pull_summary": "one peer pulled in one pass (serve --pull-interval, or the pull command)",
}

# LogRecord attributes that are not ``extra=`` fields.
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "color_message"}  # uvicorn's copy of the message with terminal colours


def rfc3339(created: float) -> str:
    """``created`` (seconds since the epoch) as RFC 3339 UTC with milliseconds."""
    whole = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((created - whole) * 1000):03d}Z"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the record was given with ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        extra = extra_fields(record)
        line: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "event": extra.pop("event", "log"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            line[name] = extra.pop(name, None)
        line.update(extra)
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message`` with the time as in JSON (RFC 3339, UTC)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever ``sys.stderr`` is when a record comes."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup(level: str = "info", fmt: str = "text") -> logging.Handler:
    """Send every record at ``level`` and above to stderr in ``fmt`` (``text`` or ``json``);
    replaces the handler an earlier call installed."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(old)
    handler = _Stderr()
    handler.setFormatter(formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:  # a line per outgoing request, raw URL included: not at info
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler


@contextlib.contextmanager
def to_stderr(level: str = "info", fmt: str = "text") -> Iterator[None]:
    """``setup`` for the duration of a command; the root logger as it was afterwards."""
    root = logging.getLogger()
    old_level = root.level
    handler = setup(level, fmt)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def access_logged(mode: str, status: int) -> bool:
    """Whether the access log in ``mode`` writes a request answered with ``status`` (0: none)."""
    return mode == "all" or (mode == "errors" and not 100 <= status < 400)
