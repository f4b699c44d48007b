"""The log store: records and how far each log file has been collected.

`LogStore` is the interface; `SqliteLogStore` keeps it in its own SQLite file
(`<data-dir>/logs.db`, WAL), apart from the lifecycle database, so that however much
the models write, lifecycle writes never wait behind it. Records of a collected chunk
and the file's new offset are written in one transaction: a controller that restarts
continues where the last one stopped, without duplicates or gaps.

Retention: records older than `retention_seconds` go, and once the records' total size
(LogRecord.size: text plus a fixed overhead per record) passes `retention_bytes`, the
oldest go until 90% of it is left. Deleting a deployment or a model deletes none.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiosqlite

from controller.errors import InvalidArgument
from controller.log_records import BUILD, LogQuery, LogRecord
from controller.store.sqlite import connect

SCHEMA = [
    """
    CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        level INTEGER NOT NULL,
        stream TEXT NOT NULL,
        model_id TEXT NOT NULL,
        deployment_id TEXT NOT NULL,
        replica_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        logger TEXT NOT NULL,
        message TEXT NOT NULL,
        size INTEGER NOT NULL
    );
    CREATE INDEX records_by_deployment ON records(deployment_id, time, id);
    CREATE INDEX records_by_model ON records(model_id, time, id);
    CREATE INDEX records_by_request ON records(request_id, time, id) WHERE request_id != '';
    CREATE INDEX records_by_time ON records(time);
    CREATE TABLE sources (
        path TEXT PRIMARY KEY,
        inode INTEGER NOT NULL,
        offset INTEGER NOT NULL
    )
    """,
]
COLUMNS = "id, time, level, stream, model_id, deployment_id, replica_id, request_id, logger, message"


@dataclass(frozen=True)
class Retention:
    max_bytes: int = 1024**3
    max_seconds: float = 7 * 86400.0


@dataclass(frozen=True)
class LogPage:
    records: list[LogRecord]
    next_page_token: str


@dataclass(frozen=True)
class Offset:
    inode: int
    offset: int


class LogStore(Protocol):
    async def add(self, records: list[LogRecord], source: tuple[str, Offset] | None = None) -> None: ...
    async def offsets(self) -> dict[str, Offset]: ...
    async def forget_sources(self, paths: Iterable[str]) -> None: ...
    async def list_records(self, query: LogQuery, page_size: int, page_token: str) -> LogPage: ...
    async def newest(self, query: LogQuery, count: int) -> list[LogRecord]: ...
    async def after(self, query: LogQuery, after_id: int, up_to_id: int, limit: int) -> list[LogRecord]: ...
    async def last_id(self) -> int: ...
    async def wait_for_records(self, timeout: float) -> None: ...
    async def enforce_retention(self, now: float) -> int: ...
    async def close(self) -> None: ...


class SqliteLogStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, retention: Retention) -> None:
        self._writer = writer
        self._reader = reader
        self.retention = retention
        self._lock = asyncio.Lock()
        self._added = asyncio.Event()
        self.total_bytes = 0

    @classmethod
    async def open(cls, path: pathlib.Path, retention: Retention) -> SqliteLogStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await connect(path)
        await _migrate(writer)
        reader = await connect(path)
        store = cls(writer, reader, retention)
        async with writer.execute("SELECT COALESCE(SUM(size), 0) FROM records") as cursor:
            row = await cursor.fetchone()
        store.total_bytes = int(row[0]) if row else 0
        return store

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    async def add(self, records: list[LogRecord], source: tuple[str, Offset] | None = None) -> None:
        """Store `records` and, in the same transaction, a file's new collection offset."""
        if not records and source is None:
            return
        async with self._lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                await self._writer.executemany(
                    "INSERT INTO records (time, level, stream, model_id, deployment_id, replica_id, request_id,"
                    " logger, message, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.time,
                            r.level,
                            r.stream,
                            r.model_id,
                            r.deployment_id,
                            r.replica_id,
                            r.request_id,
                            r.logger,
                            r.message,
                            r.size,
                        )
                        for r in records
                    ],
                )
                if source is not None:
                    path, offset = source
                    await self._writer.execute(
                        "INSERT INTO sources (path, inode, offset) VALUES (?, ?, ?) "
                        "ON CONFLICT(path) DO UPDATE SET inode = excluded.inode, offset = excluded.offset",
                        (path, offset.inode, offset.offset),
                    )
                await self._writer.commit()
            except BaseException:
                await asyncio.shield(self._writer.rollback())
                raise
            self.total_bytes += sum(r.size for r in records)
        if records:
            # Wake every waiting tail; later waiters wait on a new event.
            self._added.set()
            self._added = asyncio.Event()
        if self.total_bytes > self.retention.max_bytes:
            await self._trim_to_size()

    async def offsets(self) -> dict[str, Offset]:
        async with self._reader.execute("SELECT path, inode, offset FROM sources") as cursor:
            return {row[0]: Offset(row[1], row[2]) for row in await cursor.fetchall()}

    async def forget_sources(self, paths: Iterable[str]) -> None:
        async with self._lock:
            await self._writer.executemany("DELETE FROM sources WHERE path = ?", [(p,) for p in paths])
            await self._writer.commit()

    async def list_records(self, query: LogQuery, page_size: int, page_token: str) -> LogPage:
        where, params = _where(query)
        after = _decode_token(page_token, query.fingerprint())
        if after is not None:
            time, id_ = after
            op = "<" if query.newest_first else ">"
            where.append(f"(time {op} ? OR (time = ? AND id {op} ?))")
            params += [time, time, id_]
        direction = "DESC" if query.newest_first else "ASC"
        sql = (
            f"SELECT {COLUMNS} FROM records WHERE {' AND '.join(where)} "
            f"ORDER BY time {direction}, id {direction} LIMIT ?"
        )
        rows = await self._rows(sql, [*params, page_size + 1])
        records = [_record(row) for row in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            last = records[-1]
            token = _encode_token(last.time, last.id, query.fingerprint())
        return LogPage(records, token)

    async def newest(self, query: LogQuery, count: int) -> list[LogRecord]:
        """The newest `count` matching records, oldest first."""
        if count <= 0:
            return []
        where, params = _where(query)
        sql = f"SELECT {COLUMNS} FROM records WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        return [_record(row) for row in reversed(await self._rows(sql, [*params, count]))]

    async def after(self, query: LogQuery, after_id: int, up_to_id: int, limit: int) -> list[LogRecord]:
        """Matching records stored after record `after_id` up to `up_to_id`, in the order they were stored."""
        where, params = _where(query, by_id=True)
        sql = f"SELECT {COLUMNS} FROM records WHERE id > ? AND id <= ? AND {' AND '.join(where)} ORDER BY id LIMIT ?"
        return [_record(row) for row in await self._rows(sql, [after_id, up_to_id, *params, limit])]

    async def last_id(self) -> int:
        rows = await self._rows("SELECT COALESCE(MAX(id), 0) FROM records", [])
        return int(rows[0][0])

    async def wait_for_records(self, timeout: float) -> None:
        """Return once records are added (or after `timeout`)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._added.wait()

    async def enforce_retention(self, now: float) -> int:
        """Delete records past the age limit (and beyond the size limit); how many went."""
        cutoff = now - self.retention.max_seconds
        async with self._lock:
            rows = await self._rows_w("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE time < ?", [cutoff])
            count, size = int(rows[0][0]), int(rows[0][1])
            if count:
                await self._writer.execute("DELETE FROM records WHERE time < ?", (cutoff,))
                await self._writer.commit()
                self.total_bytes -= size
        if self.total_bytes > self.retention.max_bytes:
            count += await self._trim_to_size()
        return count

    async def _trim_to_size(self) -> int:
        """Delete the oldest records until 90% of the size limit is left."""
        deleted = 0
        target = self.retention.max_bytes * 9 // 10
        async with self._lock:
            while self.total_bytes > target:
                excess = self.total_bytes - target
                rows = await self._rows_w("SELECT id, size FROM records ORDER BY id LIMIT 5000", [])
                if not rows:
                    self.total_bytes = 0
                    break
                freed, cut_id, count = 0, rows[-1][0], len(rows)
                for index, (id_, size) in enumerate(rows):
                    freed += size
                    if freed >= excess:
                        cut_id, count = id_, index + 1
                        break
                await self._writer.execute("DELETE FROM records WHERE id <= ?", (cut_id,))
                await self._writer.commit()
                self.total_bytes -= freed
                deleted += count
        return deleted

    async def _rows(self, sql: str, params: list[Any]) -> list[Any]:
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _rows_w(self, sql: str, params: list[Any]) -> list[Any]:
        async with self._writer.execute(sql, params) as cursor:
            return list(await cursor.fetchall())


def _where(query: LogQuery, by_id: bool = False) -> tuple[list[str], list[Any]]:
    """With `by_id`, the target's indexes are kept out of the plan (a unary +): the
    caller's narrow range of IDs is the better way in."""
    where: list[str] = []
    params: list[Any] = []
    # One request's records are few: its index is the way in (the target's would scan them all).
    plus = "+" if by_id or query.request_id else ""
    if query.deployment_id:
        where.append(f"{plus}deployment_id = ?")
        params.append(query.deployment_id)
    else:
        where.append(f"{plus}model_id = ?")
        params.append(query.model_id)
    where.append("stream = ?" if query.build else "stream != ?")
    params.append(BUILD)
    if query.start_time is not None:
        where.append("time >= ?")
        params.append(query.start_time)
    if query.end_time is not None:
        where.append("time < ?")
        params.append(query.end_time)
    if query.min_level:
        where.append("level >= ?")
        params.append(query.min_level)
    if query.request_id:
        where.append("request_id = ? AND request_id != ''")  # the second: the partial index applies
        params.append(query.request_id)
    if query.text:
        escaped = query.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("message LIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    return where, params


def _record(row: Any) -> LogRecord:
    return LogRecord(
        time=row[1],
        level=row[2],
        stream=row[3],
        model_id=row[4],
        deployment_id=row[5],
        replica_id=row[6],
        request_id=row[7],
        logger=row[8],
        message=row[9],
        id=row[0],
    )


def _encode_token(time: float, id_: int, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"t": time, "i": id_, "q": fingerprint}).encode()).decode()


def _decode_token(token: str, fingerprint: str) -> tuple[float, int] | None:
    if not token:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        time, id_ = decoded["t"], decoded["i"]
        if isinstance(time, (int, float)) and isinstance(id_, int) and decoded["q"] == fingerprint:
            return float(time), id_
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not one this server issued") from None
    raise InvalidArgument(
        "INVALID_PAGE_TOKEN", "page_token continues another listing (the filter and order must stay the same)"
    )


async def _migrate(conn: aiosqlite.Connection) -> None:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = row[0] if row else 0
    if version > len(SCHEMA):
        raise RuntimeError(f"log database schema version {version} is newer than this controller knows")
    for number, script in enumerate(SCHEMA[version:], start=version + 1):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, script.split(";")):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()
