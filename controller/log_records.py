"""Log records and log queries: the domain side of the logs API (no SQL, no gRPC).

A record is one line a replica (or a build) wrote, with where it came from. A query is
what ListLogs and TailLogs ask for, checked here: every size a caller controls is
bounded, and a bad value is refused with a reason naming the field.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass
from typing import Any

from controller.errors import InvalidArgument
from slipway import request_ids
from slipway.text import cut

# Python's logging levels, by the names replicas write.
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
DEFAULT_LEVEL = LEVELS["info"]
STDOUT, STDERR, LOGGING, SERVER, BUILD = "stdout", "stderr", "logging", "server", "build"
STREAMS = (STDOUT, STDERR, LOGGING, SERVER, BUILD)
MAX_TEXT_FILTER_CHARS = 256
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_INITIAL_COUNT = 1000
# Fields a replica's record carries that are not rendered into a server event's message.
_RECORD_KEYS = frozenset({"ts", "level", "event", "replica_id", "stream", "request_id", "logger", "msg"})


@dataclass(frozen=True)
class Source:
    """Where a log file's lines belong."""

    model_id: str
    deployment_id: str
    replica_id: str = ""  # empty: a build log


@dataclass(frozen=True)
class LogRecord:
    time: float
    level: int
    stream: str
    model_id: str
    deployment_id: str
    replica_id: str
    request_id: str
    logger: str
    message: str
    id: int = 0  # the store's, once stored

    @property
    def size(self) -> int:
        """What the record counts for in the retention limit: its text and a fixed overhead
        (its other columns and its share of the indexes: the sum comes close to the file's size)."""
        return 180 + len(self.message.encode("utf-8", "replace")) + len(self.logger) + len(self.request_id)


@dataclass(frozen=True)
class LogQuery:
    """Exactly one of deployment_id and model_id (resolved: a model's ID, not its name)."""

    deployment_id: str = ""
    model_id: str = ""
    start_time: float | None = None
    end_time: float | None = None
    min_level: int = 0
    request_id: str = ""
    text: str = ""
    build: bool = False
    newest_first: bool = True

    def fingerprint(self) -> str:
        """What a page token is bound to (the same listing)."""
        return json.dumps(
            [
                self.deployment_id,
                self.model_id,
                self.start_time,
                self.end_time,
                self.min_level,
                self.request_id,
                self.text,
                self.build,
                self.newest_first,
            ]
        )


def check_filter(request_id: str, text: str, start: float | None, end: float | None) -> None:
    if request_id and not request_ids.is_valid(request_id):
        raise InvalidArgument(
            "INVALID_REQUEST_ID",
            f"request_id must be 1-{request_ids.MAX_REQUEST_ID_CHARS} characters of [A-Za-z0-9._:-]",
        )
    if len(text) > MAX_TEXT_FILTER_CHARS:
        raise InvalidArgument("LOG_TEXT_FILTER_TOO_LONG", f"text is at most {MAX_TEXT_FILTER_CHARS} characters")
    if start is not None and end is not None and end <= start:
        raise InvalidArgument("INVALID_TIME_RANGE", "end_time must be after start_time")


def log_page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument("INVALID_PAGE_SIZE", f"page_size must be 0-{MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})")
    return requested or DEFAULT_PAGE_SIZE


def initial_count(requested: int) -> int:
    if not 0 <= requested <= MAX_INITIAL_COUNT:
        raise InvalidArgument("INVALID_INITIAL_COUNT", f"initial_count must be 0-{MAX_INITIAL_COUNT}")
    return requested


def parse_replica_line(line: bytes, source: Source, now: float, max_line_bytes: int) -> LogRecord:
    """One line of a replica's log file as a record. The replica writes JSON records
    (replica/capture.py); anything else (output written below Python) is stderr, stamped
    `now`. The line is the model's to write: every field is checked, the source is ours."""
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    fields: Any = None
    if text.startswith("{"):
        try:
            fields = json.loads(text)
        except ValueError:
            fields = None
    if not isinstance(fields, dict):
        return _record(source, now, DEFAULT_LEVEL, STDERR, "", "", cut(text, max_line_bytes))
    stream = fields.get("stream")
    stream = stream if stream in STREAMS and stream != BUILD else SERVER
    level = LEVELS.get(str(fields.get("level", "")).lower(), DEFAULT_LEVEL)
    request_id = fields.get("request_id")
    request_id = request_id if isinstance(request_id, str) and request_ids.is_valid(request_id) else ""
    logger = fields.get("logger")
    logger = logger[:200] if isinstance(logger, str) else ""
    message = fields.get("msg")
    if not isinstance(message, str):
        message = _event_message(fields)
    return _record(
        source, _time(fields.get("ts"), now), level, stream, request_id, logger, cut(message, max_line_bytes)
    )


def build_record(line: bytes, source: Source, now: float, max_line_bytes: int) -> LogRecord:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    return _record(source, now, DEFAULT_LEVEL, BUILD, "", "", cut(text, max_line_bytes))


def note(source: Source, now: float, message: str) -> LogRecord:
    """A record of the collector's own (bytes it skipped)."""
    return _record(source, now, LEVELS["warning"], SERVER, "", "", message)


def _record(
    source: Source, time: float, level: int, stream: str, request_id: str, logger: str, message: str
) -> LogRecord:
    return LogRecord(
        time, level, stream, source.model_id, source.deployment_id, source.replica_id, request_id, logger, message
    )


def _event_message(fields: dict) -> str:
    """A server event ({"event": "model_loaded", "seconds": 1.2}) as `model_loaded seconds=1.2`."""
    parts = [str(fields.get("event", ""))]
    for key, value in fields.items():
        if key not in _RECORD_KEYS:
            parts.append(f"{key}={value if isinstance(value, str) else json.dumps(value, default=str)}")
    return " ".join(part for part in parts if part)


def _time(value: Any, fallback: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    return fallback
