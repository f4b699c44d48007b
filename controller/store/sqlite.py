"""The embedded backend: a SQLite file in WAL mode with two connections, one writer (every
mutation runs in an explicit BEGIN IMMEDIATE transaction, serialised by a lock, and by
SQLite's own write lock against any other process on the file) and one reader, so reads
never see a transaction that has not committed. The schema version is `PRAGMA user_version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiosqlite

from controller.store.backend import Backend, Executor, Row
from controller.store.schema import pending, statements


class SqliteExecutor(Executor):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._conn.execute(sql, tuple(params)) as cur:
            row = await cur.fetchone()
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(sql, tuple(params)) as cur:
            return [tuple(row) for row in await cur.fetchall()]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._conn.execute(sql, tuple(params)) as cur:
            return cur.rowcount


class SqliteBackend(Backend):
    def __init__(self, path: pathlib.Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.description = f"sqlite:///{path}"
        self._writer = writer
        self._reader_conn = reader
        self._reader = SqliteExecutor(reader)
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: pathlib.Path) -> SqliteBackend:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await connect(path)
        try:
            await _migrate(writer, f"sqlite:///{path}")
            reader = await connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    @property
    def reader(self) -> Executor:
        return self._reader

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        async with self._write_lock:
            try:
                # The connection's thread runs statements in order, so even if this task is
                # cancelled mid-way the ROLLBACK below lands after whatever was queued.
                await self._writer.execute("BEGIN IMMEDIATE")
                yield SqliteExecutor(self._writer)
                await self._writer.commit()
            except BaseException:
                await asyncio.shield(self._writer.rollback())
                raise

    async def announce(self, executor: Executor, payloads: list[str]) -> None:
        """Nothing: one controller uses a SQLite file (the one of its data directory)."""

    async def listen(self, on_payload: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        """Nothing to hear: no other controller writes to this file."""

    async def close(self) -> None:
        await self._reader_conn.close()
        await self._writer.close()


async def connect(path: pathlib.Path) -> aiosqlite.Connection:
    """A connection as every Slipway SQLite file is opened (WAL; the lifecycle store and logs.db)."""
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE).
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = NORMAL")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute("PRAGMA busy_timeout = 5000")
    return conn


async def _migrate(conn: aiosqlite.Connection, where: str) -> None:
    """One migration per transaction; the version is read inside it, so two processes
    opening the file at once do not both apply one."""
    while True:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            async with conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            todo = pending(row[0] if row else 0, where)
            if todo:
                number, script = todo[0]
                for statement in statements(script):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()
        if not todo:
            return
