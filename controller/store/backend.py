"""What the shared SQL (controller/store/queries.py) needs of a database: statements with
`?` placeholders run on a reader, and write transactions in which the rules checked (one
production per model, one promotion in flight, names unique per model, request_id
idempotency) still hold when they commit: SQLite runs them one at a time; on PostgreSQL
they overlap, and each takes the locks controller/store/locks.py names.

Two backends: controller/store/sqlite.py (the embedded default) and
controller/store/postgres.py.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

Row = tuple[Any, ...]


class StoreOpenError(RuntimeError):
    """The database cannot be used (unreachable, refused, or migrated by a newer Slipway);
    the message says which database and why."""


class Executor(abc.ABC):
    """Runs statements written with `?` placeholders; rows come back as tuples."""

    @abc.abstractmethod
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs a statement; returns how many rows it changed."""


class Backend(abc.ABC):
    #: What the database is, for logs and errors (never a password).
    description: str
    #: Whether write transactions run at the same time (then they take controller/store/locks.py's locks).
    concurrent_writes: bool = False

    @property
    @abc.abstractmethod
    def reader(self) -> Executor:
        """Reads outside a transaction: each statement sees what has committed."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Executor]:
        """One write transaction, serialised against every other one on the database;
        committed when the block ends, rolled back if it raises."""

    async def lock(self, executor: Executor, key: int, shared: bool = False, wait: bool = True) -> bool:
        """Inside a write transaction: takes the lock `key` until it ends (waiting for it
        unless not `wait`); whether it was taken. Only where writes are concurrent."""
        raise NotImplementedError

    @abc.abstractmethod
    async def announce(self, executor: Executor, payloads: list[str]) -> None:
        """Inside a write transaction: tells every other store on the database, when it commits
        (controller/store/changes.py)."""

    @abc.abstractmethod
    async def listen(self, on_payload: Callable[[str], None], on_reset: Callable[[], None]) -> None:
        """From now on, calls `on_payload` with what other stores announce, and `on_reset`
        when announcements may have been missed (the connection listening for them was lost
        and is back): every listener must then read again what it follows."""

    @abc.abstractmethod
    async def close(self) -> None: ...
