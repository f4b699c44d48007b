"""The PostgreSQL backend (asyncpg): a pool of reader connections and a pool of writer
connections, so that write transactions overlap — within one controller and across
controllers. Each takes the locks controller/store/locks.py names (the model it writes,
the request_id it claims, …) rather than one lock for the whole database, so every rule it
checks still holds when it commits while writes to other models run beside it and their
commits share WAL flushes. Readers take no lock and see what has committed. The schema
version is a one-row table, `slipway_schema`, migrated under a database-wide advisory lock.

Round trips inside a transaction are what it costs: BEGIN is not sent on its own but with
the transaction's first statement when that one only needs a status back (a lock, an
insert — a simple-protocol script, its parameters as escaped constants), and COMMIT
carries the transaction's NOTIFYs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg

from controller.store.backend import Backend, Executor, Row, StoreOpenError
from controller.store.changes import CHANNEL
from controller.store.pg_listen import Listener
from controller.store.schema import for_postgres, pending, statements

# pg_advisory_xact_lock's key for "migrating the schema" (any 64-bit number that nothing
# else using the database takes; these are the bytes of "slipway\0").
MIGRATION_LOCK = 0x736C697077617900
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
READ_POOL_SIZE = 4
# Write transactions in flight at once from one controller (one connection each; one that
# waits for a model's lock holds its connection meanwhile).
WRITE_POOL_SIZE = 8
COMMAND_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
# A controller paused (SIGSTOP) inside a write transaction would hold its locks (a model's,
# the leader lease's) for as long as it stays paused: the server
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
    which takes no parameters, hence the escaped constants), paid while holding the locks."""
    return "".join(f"SELECT pg_notify('{CHANNEL}', {_literal(n)}); " for n in notices) + "COMMIT"


def _constant(value: Any) -> str | None:
    """`value` as an SQL constant, for the types whose text form is exact; else None."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return _literal(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"({value})"
    if isinstance(value, float) and math.isfinite(value):
        return f"({value!r}::double precision)"
    return None


def inline(sql: str, params: Sequence[Any]) -> str | None:
    """`sql` with its `?` placeholders replaced by constants (None if a value has no exact
    constant): a statement a simple-protocol script can carry."""
    pieces = sql.split("?")
    if len(pieces) != len(params) + 1:
        return None
    out = [pieces[0]]
    for value, piece in zip(params, pieces[1:], strict=True):
        constant = _constant(value)
        if constant is None:
            return None
        out += [constant, piece]
    return "".join(out)


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """What a connection goes back to its pool with: as it came. asyncpg's default resets
    the session on every release (advisory locks, LISTENs, cursors, settings) — a round
    trip after every read and every write — and the store's sessions keep none of those:
    its locks end with their transaction, it LISTENs on a connection of its own, and it
    sets nothing (a transaction still open is rolled back by asyncpg itself)."""


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


class TransactionExecutor(Executor):
    """A write transaction on one writer connection, begun with its first statement."""

    def __init__(self, pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
        self._pool = pool
        self.conn = conn
        self.begun = False
        # Announcements of this transaction, sent with its COMMIT (controller/store/changes.py).
        self.notices: list[str] = []

    async def _first(self, run: Callable[[asyncpg.Connection], Any]) -> Any:
        """The transaction's first round trip. A connection found dead here had done nothing
        (no transaction of it committed): it is replaced and the round trip sent again."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                result = await run(self.conn)
                self.begun = True
                return result
            except BaseException as exc:
                self.begun = not isinstance(exc, CONNECTION_LOST)  # else nothing is open to roll back
                if self.begun or attempt == ATTEMPTS:
                    raise
                await self._pool.release(self.conn)  # closed, not reused
                self.conn = await self._pool.acquire()
        raise AssertionError("unreachable")

    async def _begin(self) -> None:
        if not self.begun:
            await self._first(lambda conn: conn.execute(BEGIN))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        await self._begin()
        row = await self.conn.fetchrow(numbered(sql), *params)
        return tuple(row) if row is not None else None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        await self._begin()
        return [tuple(row) for row in await self.conn.fetch(numbered(sql), *params)]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        script = None if self.begun else inline(sql, params)
        if script is not None:
            status = await self._first(lambda conn: conn.execute(f"{BEGIN}; {script}"))
        else:
            await self._begin()
            status = await self.conn.execute(numbered(sql), *params)
        # "UPDATE 3", "DELETE 0", "INSERT 0 1": the last number is the row count.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def commit(self) -> None:
        if self.begun:
            await self.conn.execute(commit_script(self.notices))
        elif self.notices:  # nothing but announcements: BEGIN with them
            await self._first(lambda conn: conn.execute(f"{BEGIN}; {commit_script(self.notices)}"))

    async def rollback(self) -> None:
        if not self.begun:
            return
        try:
            await asyncio.shield(self.conn.execute("ROLLBACK"))
        except Exception:
            # Mid-statement (cancelled) or broken: drop the connection, the server
            # rolls back a transaction whose connection is gone, the pool opens another.
            with contextlib.suppress(Exception):
                self.conn.terminate()


class PostgresBackend(Backend):
    concurrent_writes = True

    def __init__(self, url: str, writers: asyncpg.Pool, readers: asyncpg.Pool) -> None:
        self.description = describe(url)
        self._url = url
        self.listener: Listener | None = None
        self._writers = writers
        self._readers = readers
        self._reader = PostgresExecutor(readers)

    @classmethod
    async def open(cls, url: str) -> PostgresBackend:
        try:
            writers = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=WRITE_POOL_SIZE,
                command_timeout=COMMAND_TIMEOUT_SECONDS,
                timeout=CONNECT_TIMEOUT_SECONDS,
                reset=_nothing_to_reset,
                server_settings={"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)},
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise StoreOpenError(f"cannot connect to {describe(url)}: {exc}") from exc
        try:
            async with writers.acquire() as conn:
                await _migrate(conn, describe(url))
            readers = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=READ_POOL_SIZE,
                command_timeout=COMMAND_TIMEOUT_SECONDS,
                timeout=CONNECT_TIMEOUT_SECONDS,
                reset=_nothing_to_reset,
            )
        except BaseException:
            await writers.close()
            raise
        return cls(url, writers, readers)

    @property
    def reader(self) -> Executor:
        return self._reader

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        executor = TransactionExecutor(self._writers, await self._writers.acquire())
        try:
            yield executor
            await executor.commit()
        except BaseException:
            await executor.rollback()
            raise
        finally:
            await self._writers.release(executor.conn)

    async def lock(self, executor: Executor, key: int, shared: bool = False, wait: bool = True) -> bool:
        function = f"pg{'' if wait else '_try'}_advisory_xact_lock{'_shared' if shared else ''}"
        if wait:
            await executor.execute(f"SELECT {function}(?)", (key,))
            return True
        row = await executor.fetchone(f"SELECT {function}(?)", (key,))
        return bool(row and row[0])

    async def announce(self, executor: Executor, payloads: list[str]) -> None:
        assert isinstance(executor, TransactionExecutor)
        executor.notices.extend(payloads)

    async def listen(self, on_payload: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        """LISTEN on a connection of its own (notifications arrive between statements),
        opened again whenever it is lost (controller/store/pg_listen.py)."""
        self.listener = Listener(self._url, self.description, on_payload, on_reset)
        await self.listener.start()

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        await self._readers.close()
        await self._writers.close()


async def _migrate(conn: asyncpg.Connection, where: str) -> None:
    """One migration per transaction, under the migration lock, so controllers starting at
    once against one database apply each migration once."""
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
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
