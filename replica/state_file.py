"""The state file: how the process that spawned the replica learns its port and phase.

Always replaced atomically, so a reader sees either the old or the new JSON, never
a partial write.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

LOADING = "loading"
READY = "ready"
FAILED = "failed"
# The model's is_healthy() failed once it was ready: the replica drains and exits.
UNHEALTHY = "unhealthy"


class StateFile:
    def __init__(self, path: pathlib.Path, replica_id: str | None) -> None:
        self._path = path
        self._replica_id = replica_id
        self.port: int | None = None
        # The HTTP predict route's (replica/direct.py).
        self.http_port: int | None = None

    def write(self, phase: str, **extra: Any) -> None:
        state = {
            "pid": os.getpid(),
            "port": self.port,
            "http_port": self.http_port,
            "replica_id": self._replica_id,
            "phase": phase,
            **extra,
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_text(json.dumps(state) + "\n", encoding="utf-8")
        os.replace(tmp, self._path)
