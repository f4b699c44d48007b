"""The controller's state: one interface (controller/store/interface.py), one set of SQL
and migrations (queries.py, reads.py, write_tx.py, schema.py), two backends — SQLite, the embedded default
(sqlite.py), and PostgreSQL (postgres.py) — chosen by a database URL."""

from __future__ import annotations

import pathlib

from controller.store.backend import StoreOpenError
from controller.store.interface import Store, WriteTx
from controller.store.queries import SqlStore
from controller.store.rows import (
    ApiKeyRow,
    Change,
    EventRow,
    Page,
    ReplicaRow,
    RouteSnapshot,
    SecretRow,
    UsageRow,
    new_id,
    now,
)
from controller.store.schema import SchemaTooNew

# The file the embedded default keeps state in, in the data directory.
SQLITE_FILENAME = "controller.db"


class BadDatabaseUrl(StoreOpenError):
    pass


def sqlite_url(path: pathlib.Path) -> str:
    """`sqlite:///` and the path (an absolute path makes four slashes, as in SQLAlchemy)."""
    return f"sqlite:///{path}"


def default_database_url(data_dir: pathlib.Path) -> str:
    return sqlite_url(data_dir / SQLITE_FILENAME)


def check_database_url(url: str) -> str:
    """The URL if it names a database this controller can use; else BadDatabaseUrl."""
    if url.startswith("sqlite:///"):
        if not url.removeprefix("sqlite:///") or "?" in url:
            raise BadDatabaseUrl(f"{url!r}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        return url
    if url.startswith(("postgresql://", "postgres://")):
        return url
    raise BadDatabaseUrl(
        f"{url.split('://', 1)[0] if '://' in url else url!r} is not a database this controller uses: "
        "give sqlite:///PATH or postgresql://[user[:password]@][host][:port]/dbname"
    )


async def open_store(url: str) -> SqlStore:
    """The store at `url`, migrated to this code's schema (SchemaTooNew if it is newer)."""
    check_database_url(url)
    if url.startswith("sqlite:///"):
        from controller.store.sqlite import SqliteBackend

        return SqlStore(await SqliteBackend.open(pathlib.Path(url.removeprefix("sqlite:///"))))
    from controller.store.postgres import PostgresBackend

    return SqlStore(await PostgresBackend.open(url))


__all__ = [
    "ApiKeyRow",
    "BadDatabaseUrl",
    "Change",
    "EventRow",
    "Page",
    "ReplicaRow",
    "RouteSnapshot",
    "SchemaTooNew",
    "SecretRow",
    "SqlStore",
    "StoreOpenError",
    "Store",
    "UsageRow",
    "WriteTx",
    "check_database_url",
    "default_database_url",
    "new_id",
    "now",
    "open_store",
    "sqlite_url",
]
