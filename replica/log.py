"""Structured logging: one JSON object per line on stderr."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any, TextIO

from replica.capture import REQUEST_ID, LogSink


class Logger:
    def __init__(self, replica_id: str | None, stream: TextIO | None = None, sink: LogSink | None = None) -> None:
        self._replica_id = replica_id
        self._stream = stream
        # With a sink (replica/capture.py), records go through it: bounded, and stamped
        # with the request being handled.
        self._sink = sink

    def info(self, event: str, **fields: Any) -> None:
        self._write("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._write("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._write("error", event, fields)

    def _write(self, level: str, event: str, fields: dict[str, Any]) -> None:
        record = {
            "ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "event": event,
            "replica_id": self._replica_id,
        }
        # The four keys above always win over a same-named field.
        record.update((key, value) for key, value in fields.items() if key not in record)
        if self._sink is not None:
            record.setdefault("stream", "server")
            if REQUEST_ID.get():
                record.setdefault("request_id", REQUEST_ID.get())
            self._sink.write(record)
            return
        stream = self._stream or sys.stderr
        stream.write(json.dumps(record, default=str) + "\n")
        stream.flush()
