"""Capture of the model's output as structured records, stamped with the request being handled.

Once `install` has run, print() and sys.stdout, sys.stderr, Python's logging and the
model server's own events all become one JSON object per line on the replica's
descriptor 2 (the log file the controller collects from):

    {"ts": 1700000000.123, "level": "info", "stream": "stdout", "msg": "...",
     "request_id": "req-...", "logger": "..."}

The request ID is a context variable the servicer sets for the duration of a call; the
threads the replica runs synchronous model code in get a copy of the caller's context
(replica/threads.py), so their lines carry it too. Threads the model starts itself do not.

Bounded: a line longer than `max_line_bytes` is cut (with a note of how much was left
out), and records beyond `rate_bytes` per second (after a burst of `burst_bytes`) are
dropped and counted; the count is written as a warning with the next record let through.
Nothing is buffered beyond one partial line per thread, so a model that prints a
gigabyte costs no memory, and at most the rate in disk.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from slipway.text import cut

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("slipway_request_id", default="")
DEFAULT_MAX_LINE_BYTES = 16 * 1024
DEFAULT_RATE_BYTES = 1024 * 1024
DEFAULT_BURST_BYTES = 8 * 1024 * 1024


class LogSink:
    """Writes records to a descriptor, one JSON line each, within a line limit and a rate."""

    def __init__(
        self,
        fd: int = 2,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        rate_bytes: int = DEFAULT_RATE_BYTES,
        burst_bytes: int = DEFAULT_BURST_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fd = fd
        self.max_line_bytes = max_line_bytes
        self.rate_bytes = rate_bytes
        self.burst_bytes = max(burst_bytes, max_line_bytes)
        self._clock = clock
        self._tokens = float(self.burst_bytes)
        self._last = clock()
        self._lock = threading.RLock()
        self.dropped_records = 0
        self.dropped_bytes = 0

    def emit(self, stream: str, level: str, message: str, *, logger: str = "", **fields: Any) -> None:
        record: dict[str, Any] = {"ts": round(time.time(), 6), "level": level, "stream": stream}
        request_id = REQUEST_ID.get()
        if request_id:
            record["request_id"] = request_id
        if logger:
            record["logger"] = logger
        record["msg"] = cut(message, self.max_line_bytes)
        record.update((key, value) for key, value in fields.items() if key not in record)
        self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        """Write one record (any JSON object), or count it as dropped when over the rate."""
        line = json.dumps(record, default=str, ensure_ascii=False).encode("utf-8", "replace")
        if len(line) > self.max_line_bytes + 1024:  # extra fields (a traceback) are cut too
            record = {k: (cut(v, self.max_line_bytes) if isinstance(v, str) else v) for k, v in record.items()}
            line = json.dumps(record, default=str, ensure_ascii=False).encode("utf-8", "replace")[
                : self.max_line_bytes * 2
            ]
            if not line.endswith(b"}"):
                line = json.dumps({k: record[k] for k in ("ts", "level", "stream") if k in record}).encode()
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst_bytes, self._tokens + (now - self._last) * self.rate_bytes)
            self._last = now
            if self._tokens < len(line):
                self.dropped_records += 1
                self.dropped_bytes += len(line)
                return
            self._tokens -= len(line)
            if self.dropped_records:
                self._write_dropped_note()
            self._write(line + b"\n")

    def flush_dropped(self) -> None:
        """Write the count of dropped records now, if any (at exit)."""
        with self._lock:
            if self.dropped_records:
                self._write_dropped_note()

    def _write_dropped_note(self) -> None:
        note = {
            "ts": round(time.time(), 6),
            "level": "warning",
            "stream": "server",
            "msg": (
                f"{self.dropped_records} log records ({self.dropped_bytes} bytes) dropped: "
                f"over the replica's log rate of {self.rate_bytes} bytes/s"
            ),
            "dropped_records": self.dropped_records,
        }
        self.dropped_records = self.dropped_bytes = 0
        self._write(json.dumps(note).encode() + b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError:
                return  # nowhere to log to: output is lost, the model goes on
            view = view[written:]


class _Bytes(io.RawIOBase):
    """sys.stdout.buffer of a captured stream: bytes are decoded and captured as text."""

    def __init__(self, text: CapturedStream) -> None:
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._text.write(bytes(data).decode("utf-8", "replace"))
        return len(data)


class CapturedStream(io.TextIOBase):
    """A sys.stdout or sys.stderr whose complete lines become records (one partial line per thread)."""

    def __init__(self, sink: LogSink, stream: str, fd: int) -> None:
        self._sink = sink
        self._stream = stream
        self._fd = fd
        self._partial: dict[int, str] = {}
        self._lock = threading.Lock()
        self._buffer = _Bytes(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    @property
    def buffer(self) -> _Bytes:
        return self._buffer

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        thread = threading.get_ident()
        with self._lock:
            pending = self._partial.pop(thread, "") + text
            *lines, rest = pending.split("\n")
            if len(rest) > self._sink.max_line_bytes:  # a line without end: out it goes, cut
                lines.append(rest)
                rest = ""
            if rest:
                self._partial[thread] = rest
        for line in lines:
            self._sink.emit(self._stream, "info", line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        pass  # records are written as lines complete

    def close_partial(self) -> None:
        """Write every thread's unfinished line (at exit)."""
        with self._lock:
            pending, self._partial = list(self._partial.values()), {}
        for line in pending:
            self._sink.emit(self._stream, "info", line)


class CaptureHandler(logging.Handler):
    """Python logging records as sink records, with their level and logger name."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self._sink = sink
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            self._sink.emit("logging", record.levelname.lower(), message, logger=record.name)
        except Exception:
            self.handleError(record)


def install(sink: LogSink) -> tuple[CapturedStream, CapturedStream]:
    """Capture stdout, stderr and logging (root level INFO, so a model's logger.info counts)."""
    stdout, stderr = CapturedStream(sink, "stdout", 1), CapturedStream(sink, "stderr", 2)
    sys.stdout, sys.stderr = stdout, stderr
    root = logging.getLogger()
    root.handlers[:] = [CaptureHandler(sink)]
    root.setLevel(logging.INFO)
    return stdout, stderr
