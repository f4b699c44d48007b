"""Collects replica and build log files into the log store.

Replicas write their records to their own log file (`<data-dir>/logs/<replica>.log`,
replica/capture.py); builds write theirs to `<builds>/logs/<deployment>.log`. Files
outlive a controller restart and the replica itself, so the collector reads them rather
than a pipe: every `poll_seconds` it reads what each file gained since its stored offset
(at most `read_bytes` per file and pass), turns complete lines into records and stores
them with the new offset in one transaction.

Bounded whatever a model writes: a line is cut at `max_line_bytes`; a file further
behind than `max_backlog_bytes` has the excess skipped (and a warning record says how
much); memory holds one chunk per file at a time. Which deployment and model a file
belongs to comes from the lifecycle store (the replica's row), never from its lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from controller import log_records
from controller.log_records import Source
from controller.log_store import LogStore, Offset, Retention

log = logging.getLogger("slipway.logs")

# A replica or build log file → its source (None: not known, or not yet).
Resolver = Callable[[pathlib.Path, bool], Awaitable[Source | None]]


@dataclass(frozen=True)
class CollectorSettings:
    poll_seconds: float = 0.25
    read_bytes: int = 1024 * 1024
    max_line_bytes: int = 16 * 1024
    max_backlog_bytes: int = 64 * 1024 * 1024
    retention_check_seconds: float = 60.0
    # A last line without its newline is taken as it is once the file is this still.
    settle_seconds: float = 2.0


@dataclass(frozen=True)
class LogSettings:
    """The operator's log settings (flags --log-retention-bytes, --log-retention-seconds,
    --log-line-bytes, --log-rate-bytes)."""

    retention: Retention = field(default_factory=Retention)
    collector: CollectorSettings = field(default_factory=CollectorSettings)
    # What one replica may write per second (after a burst of 8 times as much); the rest is dropped and counted.
    replica_rate_bytes: int = 1024 * 1024


class LogCollector:
    def __init__(
        self,
        store: LogStore,
        replica_logs: pathlib.Path,
        build_logs: pathlib.Path | None,
        resolve: Resolver,
        settings: CollectorSettings,
    ) -> None:
        self.store = store
        self.replica_logs = replica_logs
        self.build_logs = build_logs
        self.resolve = resolve
        self.settings = settings
        self._offsets: dict[str, Offset] = {}
        self._task: asyncio.Task | None = None
        self._last_retention = 0.0
        # Files in the middle of a line too long to keep whole (its start is stored, cut).
        self._rest_of_line: set[str] = set()

    async def start(self) -> None:
        self._offsets = await self.store.offsets()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.collect()  # what replicas wrote while they drained

    async def _run(self) -> None:
        while True:
            try:
                await self.collect()
                now = time.time()
                if now - self._last_retention >= self.settings.retention_check_seconds:
                    self._last_retention = now
                    removed = await self.store.enforce_retention(now)
                    if removed:
                        log.info("log retention removed %d records", removed)
                    await self._forget_removed_files()
            except Exception:
                log.exception("collecting logs failed; trying again")
            await asyncio.sleep(self.settings.poll_seconds)

    async def _forget_removed_files(self) -> None:
        """Offsets of files garbage collection removed (so the table does not grow for ever)."""
        gone = [path for path in self._offsets if not os.path.exists(path)]
        if gone:
            await self.store.forget_sources(gone)
            for path in gone:
                del self._offsets[path]

    def _files(self) -> list[tuple[pathlib.Path, bool]]:
        files = [(p, False) for p in self.replica_logs.glob("*.log") if not p.name.startswith("forkserver")]
        if self.build_logs is not None:
            files += [(p, True) for p in self.build_logs.glob("*.log")]
        return files

    async def collect(self) -> int:
        """One pass over every file; how many records were stored."""
        stored = 0
        for path, build in self._files():
            try:
                stat = path.stat()
            except OSError:
                continue
            known = self._offsets.get(str(path))
            offset = known.offset if known is not None and known.inode == stat.st_ino else 0
            if stat.st_size < offset:  # truncated or replaced: from the start
                offset = 0
            if stat.st_size == offset:
                continue
            source = await self.resolve(path, build)
            if source is None:
                continue
            stored += await self._collect_file(path, stat, offset, source, build)
        return stored

    async def _collect_file(
        self, path: pathlib.Path, stat: os.stat_result, offset: int, source: Source, build: bool
    ) -> int:
        now = time.time()
        records = []
        behind = stat.st_size - offset
        if behind > self.settings.max_backlog_bytes:
            skipped = behind - self.settings.max_backlog_bytes
            offset += skipped
            records.append(log_records.note(source, now, f"{skipped} bytes of log skipped: the collector fell behind"))
        chunk = await asyncio.to_thread(_read, path, offset, self.settings.read_bytes)
        if records or str(path) in self._rest_of_line:
            # Skipped into a line, or past the part of one kept: resume at the next line.
            start = chunk.find(b"\n") + 1
            if start == 0:
                await self.store.add(records, (str(path), Offset(stat.st_ino, offset + len(chunk))))
                self._offsets[str(path)] = Offset(stat.st_ino, offset + len(chunk))
                return len(records)
            self._rest_of_line.discard(str(path))
            chunk, offset = chunk[start:], offset + start
        end = chunk.rfind(b"\n") + 1
        if end == 0:
            if len(chunk) >= self.settings.read_bytes:
                end = len(chunk)  # the start of one long line (cut below); the rest is skipped
                self._rest_of_line.add(str(path))
            elif now - stat.st_mtime >= self.settings.settle_seconds:
                end = len(chunk)  # a last line that will not get its end
            elif not records:
                return 0
        limit = self.settings.max_line_bytes
        parse = log_records.build_record if build else log_records.parse_replica_line
        for line in chunk[:end].split(b"\n"):
            if line.strip():
                records.append(parse(line[: limit * 4], source, now, limit))
        new = Offset(stat.st_ino, offset + end)
        await self.store.add(records, (str(path), new))
        self._offsets[str(path)] = new
        return len(records)


def _read(path: pathlib.Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)
