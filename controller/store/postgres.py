"""The PostgreSQL backend (asyncpg): a pool of reader connections and one writer connection.

Write transactions are serialised the way SQLite's BEGIN IMMEDIATE serialises them: each
takes one transaction-scoped advisory lock (`pg_advisory_xact_lock`) before its first
statement, so of all the controllers writing to the database one transaction runs at a
time and every rule it checks still holds when it commits (at most one production and one
promotion in flight per model, names unique per model, request_id idempotency). Readers
take no lock and see what has committed. The schema version is a one-row table,
`slipway_schema`, migrated under the same lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg

from controller.store.backend import Backend, Executor, Row, StoreOpenError
from controller.store.changes import CHANNEL
from controller.store.schema import for_postgres, pending, statements

# pg_advisory_xact_lock's key for "a Slipway write transaction" (any 64-bit number that
# nothing else using the database takes; these are the bytes of "slipway\0").
WRITE_LOCK = 0x736C697077617900
BEGIN_WRITE = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
READ_POOL_SIZE = 4
COMMAND_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
# A controller paused (SIGSTOP) inside a write transaction would hold the write lock, and so
# every controller's writes and the leader lease, for as long as it stays paused: the server
# ends such a session (rolling its transaction back) once it has sat idle this long.
IDLE_IN_TRANSACTION_MS = 2000
_PLACEHOLDER = re.compile(r"\?")


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """`?` placeholders (the shared SQL's) as PostgreSQL's $1, $2, …"""
    counter = iter(range(1, 1 << 16))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def describe(url: str) -> str:
    """The URL without its password (in the authority or a `password=` option), for logs and errors."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = "&".join(
        "password=***" if option.split("=", 1)[0] == "password" else option for option in parts.query.split("&")
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _literal(text: str) -> str:
    """`text` as an escaped string constant (E'…': the same whatever standard_conforming_strings says)."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def commit_script(notices: list[str]) -> str:
    """COMMIT, preceded by the transaction's NOTIFYs: one round trip (a simple-protocol script,
    which takes no parameters, hence the escaped constants), paid while holding the write lock."""
    return "".join(f"SELECT pg_notify('{CHANNEL}', {_literal(n)}); " for n in notices) + "COMMIT"


# What a connection that died while idle (the server restarted, a proxy dropped it) raises
# at its next use; the pool opens a new one for the next acquire.
CONNECTION_LOST = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, ConnectionError)
ATTEMPTS = 3


class PostgresExecutor(Executor):
    def __init__(self, conn: asyncpg.Pool | asyncpg.Connection) -> None:
        self._conn = conn
        # Announcements of this transaction, sent with its COMMIT (controller/store/changes.py).
        self.notices: list[str] = []

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = await self._read(self._conn.fetchrow, sql, params)
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(row) for row in await self._read(self._conn.fetch, sql, params)]

    async def _read(self, method: Any, sql: str, params: Sequence[Any]) -> Any:
        """A read on the pool is tried again on another connection if its connection had
        died (a read changes nothing); inside a transaction it is not."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await method(numbered(sql), *params)
            except CONNECTION_LOST:
                if not isinstance(self._conn, asyncpg.Pool) or attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        status = await self._conn.execute(numbered(sql), *params)
        # "UPDATE 3", "DELETE 0", "INSERT 0 1": the last number is the row count.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0


class PostgresBackend(Backend):
    def __init__(self, url: str, writer: asyncpg.Pool, readers: asyncpg.Pool) -> None:
        self.description = describe(url)
        self._url = url
        self._listener: asyncpg.Connection | None = None
        self._writer = writer
        self._readers = readers
        self._reader = PostgresExecutor(readers)
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str) -> PostgresBackend:
        # The writer is a pool of one so that a connection the server dropped is replaced.
        try:
            writer = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=1,
                command_timeout=COMMAND_TIMEOUT_SECONDS,
                timeout=CONNECT_TIMEOUT_SECONDS,
                server_settings={"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)},
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise StoreOpenError(f"cannot connect to {describe(url)}: {exc}") from exc
        try:
            async with writer.acquire() as conn:
                await _migrate(conn, describe(url))
            readers = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=READ_POOL_SIZE,
                command_timeout=COMMAND_TIMEOUT_SECONDS,
                timeout=CONNECT_TIMEOUT_SECONDS,
            )
        except BaseException:
            await writer.close()
            raise
        return cls(url, writer, readers)

    @property
    def reader(self) -> Executor:
        return self._reader

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        async with self._write_lock:
            conn = await self._begin()
            try:
                executor = PostgresExecutor(conn)
                yield executor
                await conn.execute(commit_script(executor.notices))
            except BaseException:
                try:
                    await asyncio.shield(conn.execute("ROLLBACK"))
                except Exception:
                    # Mid-statement (cancelled) or broken: drop the connection, the server
                    # rolls back a transaction whose connection is gone, the pool opens another.
                    with contextlib.suppress(Exception):
                        conn.terminate()
                raise
            finally:
                await self._writer.release(conn)

    async def _begin(self) -> asyncpg.Connection:
        """The writer connection with a transaction begun and the write lock held. BEGIN
        and the lock go in one round trip (a simple-protocol script): every write waits on
        the lock, so each round trip inside it is paid by all of them. A connection found
        dead here had done nothing yet: it is replaced and BEGIN sent again."""
        for attempt in range(1, ATTEMPTS + 1):
            conn = await self._writer.acquire()
            try:
                await conn.execute(BEGIN_WRITE)
                return conn
            except BaseException as exc:
                await self._writer.release(conn)  # a dead or interrupted one is closed, not reused
                if not isinstance(exc, CONNECTION_LOST) or attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def announce(self, executor: Executor, payloads: list[str]) -> None:
        assert isinstance(executor, PostgresExecutor)
        executor.notices.extend(payloads)

    async def listen(self, on_payload: Callable[[str], None]) -> None:
        """LISTEN on a connection of its own (notifications arrive between statements)."""
        try:
            conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT_SECONDS)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreOpenError(f"cannot listen for changes on {self.description}: {exc}") from exc
        await conn.add_listener(CHANNEL, lambda _conn, _pid, _channel, payload: on_payload(payload))
        self._listener = conn

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        await self._readers.close()
        await self._writer.close()


async def _migrate(conn: asyncpg.Connection, where: str) -> None:
    """One migration per transaction, under the write lock, so controllers starting at once
    against one database apply each migration once."""
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS slipway_schema (version BIGINT NOT NULL)")
            version = await conn.fetchval("SELECT version FROM slipway_schema")
            if version is None:
                await conn.execute("INSERT INTO slipway_schema (version) VALUES (0)")
                version = 0
            todo = pending(version, where)
            if not todo:
                return
            number, script = todo[0]
            for statement in statements(for_postgres(script)):
                await conn.execute(statement)
            await conn.execute("UPDATE slipway_schema SET version = $1", number)
