"""All of the controller's SQL lives here.

SQLite in WAL mode with two connections: one writer (every mutation runs in an
explicit BEGIN IMMEDIATE transaction, serialised by a lock) and one reader, so reads
never see a transaction that has not committed. The schema is migrated on
`PRAGMA user_version`. Rows are never removed: deleted models and deployments keep
their rows (with delete_time set), so IDs are never reused and usage survives.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import pathlib
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiosqlite

from controller.domain import AutoscalingSettings, Deployment, Kind, Model, State
from controller.errors import InvalidArgument

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE models (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        production_deployment_id TEXT,
        development_deployment_id TEXT,
        promoting_deployment_id TEXT,
        next_deployment_number INTEGER NOT NULL DEFAULT 1,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL,
        delete_time REAL
    );
    CREATE UNIQUE INDEX models_live_name ON models(name) WHERE delete_time IS NULL;

    CREATE TABLE deployments (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        model_id TEXT NOT NULL REFERENCES models(id),
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        active INTEGER NOT NULL,
        autoscaling TEXT NOT NULL,
        package_digest TEXT NOT NULL,
        revision INTEGER NOT NULL DEFAULT 1,
        state TEXT NOT NULL,
        status_message TEXT NOT NULL DEFAULT '',
        desired_replicas INTEGER NOT NULL DEFAULT 0,
        ready_replicas INTEGER NOT NULL DEFAULT 0,
        source_deployment_id TEXT,
        failed_revision INTEGER,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL,
        delete_time REAL
    );
    CREATE UNIQUE INDEX deployments_live_name ON deployments(model_id, name) WHERE delete_time IS NULL;
    CREATE INDEX deployments_by_model ON deployments(model_id, pk);

    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        deployment_id TEXT NOT NULL REFERENCES deployments(id),
        revision INTEGER NOT NULL,
        pid INTEGER,
        port INTEGER,
        start_time REAL NOT NULL,
        ready_time REAL,
        stop_time REAL
    );
    CREATE INDEX replicas_by_deployment ON replicas(deployment_id);
    CREATE INDEX replicas_running ON replicas(stop_time) WHERE stop_time IS NULL;

    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        create_time REAL NOT NULL,
        model_id TEXT NOT NULL,
        deployment_id TEXT NOT NULL DEFAULT '',
        type TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_model ON events(model_id, seq);
    CREATE INDEX events_by_deployment ON events(deployment_id, seq);

    CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        method TEXT NOT NULL,
        result TEXT NOT NULL,
        create_time REAL NOT NULL
    );

    CREATE TABLE packages (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        create_time REAL NOT NULL
    );
    """,
    # 2: what a request_id was used for, so reusing it for a different request is refused
    """
    ALTER TABLE requests ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''
    """,
    # 3: a live-reload patch that is not (yet) the package a development deployment serves
    """
    ALTER TABLE deployments ADD COLUMN patched_digest TEXT;
    ALTER TABLE deployments ADD COLUMN reload_error TEXT NOT NULL DEFAULT ''
    """,
    # 4: platform-managed secrets, encrypted by controller/secrets.py (the key is not in the database)
    """
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        ciphertext BLOB NOT NULL,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL
    )
    """,
    # 5: user API keys, by hash only (slipway/keys.py)
    """
    CREATE TABLE api_keys (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        scope TEXT NOT NULL,
        model_ids TEXT NOT NULL,
        key_sha256 BLOB NOT NULL,
        create_time REAL NOT NULL,
        last_used_time REAL,
        expire_time REAL,
        revoke_time REAL
    )
    """,
]

DEPLOYMENT_COLUMNS = """
    d.pk, d.id, d.model_id, d.name, d.kind, d.active, d.autoscaling, d.package_digest, d.revision,
    d.state, d.status_message, d.desired_replicas, d.ready_replicas, d.source_deployment_id,
    d.failed_revision, d.create_time, d.update_time, d.delete_time,
    (m.production_deployment_id IS NOT NULL AND m.production_deployment_id = d.id) AS is_production,
    d.patched_digest, d.reload_error
"""
DEPLOYMENT_SELECT = f"SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN models m ON m.id = d.model_id"
MODEL_SELECT = """
    SELECT m.pk, m.id, m.name, m.production_deployment_id, m.development_deployment_id,
           m.promoting_deployment_id, m.next_deployment_number, m.create_time, m.update_time,
           m.delete_time,
           (SELECT COUNT(*) FROM deployments d WHERE d.model_id = m.id AND d.delete_time IS NULL)
    FROM models m
"""


def new_id(prefix: str) -> str:
    """Opaque ID: a prefix and 60 random bits in lowercase base32."""
    return prefix + base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]


def encode_page_token(after_pk: int, query: str) -> str:
    """A page token names the listing it continues (`query`: collection and filters)."""
    return base64.urlsafe_b64encode(json.dumps({"after": after_pk, "query": query}).encode()).decode()


def decode_page_token(token: str, query: str) -> int:
    if not token:
        return 0
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = decoded["after"]
        if isinstance(after, int) and after >= 0 and decoded["query"] == query:
            return after
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument("INVALID_PAGE_TOKEN", f"page_token {token!r} is not one this server issued") from None
    raise InvalidArgument(
        "INVALID_PAGE_TOKEN", f"page_token {token!r} continues another listing (the filters must stay the same)"
    )


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_page_token: str


@dataclass(frozen=True)
class Change:
    """What one committed transaction touched."""

    deployments: set[str]
    models: set[str]
    api_keys: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class RouteSnapshot:
    models: list[Model]
    deployments: list[Deployment]
    deleted_model_ids: list[str]
    deleted_deployment_ids: list[str]


@dataclass(frozen=True)
class ApiKeyRow:
    id: str
    name: str
    scope: str
    model_ids: tuple[str, ...]
    key_sha256: bytes
    create_time: float
    last_used_time: float | None
    expire_time: float | None
    revoke_time: float | None


API_KEY_SELECT = (
    "SELECT pk, id, name, scope, model_ids, key_sha256, create_time, last_used_time, expire_time, revoke_time "
    "FROM api_keys"
)


def _api_key(row: sqlite3.Row | tuple) -> ApiKeyRow:
    return ApiKeyRow(row[1], row[2], row[3], tuple(json.loads(row[4])), bytes(row[5]), *row[6:10])


@dataclass(frozen=True)
class ReplicaRow:
    id: str
    deployment_id: str
    revision: int
    pid: int | None
    port: int | None
    start_time: float
    ready_time: float | None
    stop_time: float | None


@dataclass(frozen=True)
class UsageRow:
    model_id: str
    deployment_id: str
    deployment_name: str
    replica_seconds: float
    replica_starts: int
    deployment_deleted: bool


@dataclass(frozen=True)
class SecretRow:
    name: str
    ciphertext: bytes
    create_time: float
    update_time: float


@dataclass(frozen=True)
class EventRow:
    seq: int
    create_time: float
    model_id: str
    deployment_id: str
    type: str
    message: str


def _model(row: sqlite3.Row | tuple) -> Model:
    return Model(
        id=row[1],
        name=row[2],
        production_deployment_id=row[3],
        development_deployment_id=row[4],
        promoting_deployment_id=row[5],
        next_deployment_number=row[6],
        create_time=row[7],
        update_time=row[8],
        delete_time=row[9],
        deployment_count=row[10],
    )


def _deployment(row: sqlite3.Row | tuple) -> Deployment:
    return Deployment(
        id=row[1],
        model_id=row[2],
        name=row[3],
        kind=Kind(row[4]),
        active=bool(row[5]),
        autoscaling=AutoscalingSettings(**json.loads(row[6])),
        package_digest=row[7],
        revision=row[8],
        state=State(row[9]),
        status_message=row[10],
        desired_replicas=row[11],
        ready_replicas=row[12],
        source_deployment_id=row[13],
        failed_revision=row[14],
        create_time=row[15],
        update_time=row[16],
        delete_time=row[17],
        is_production=bool(row[18]),
        patched_digest=row[19],
        reload_error=row[20],
    )


def _deployment_values(deployment: Deployment) -> dict[str, Any]:
    values = asdict(deployment)
    values.pop("is_production")
    values["autoscaling"] = json.dumps(values["autoscaling"], sort_keys=True)
    values["kind"] = deployment.kind.value
    values["state"] = deployment.state.value
    values["active"] = int(deployment.active)
    return values


def _page(rows: Sequence[Any], limit: int, convert: Callable[[Any], Any], query: str) -> Page:
    items = [convert(r) for r in rows[:limit]]
    token = encode_page_token(rows[limit - 1][0], query) if len(rows) > limit else ""
    return Page(items, token)


class Reads:
    """Queries shared by the reader connection and write transactions."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        async with self._conn.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self._conn.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    async def get_model(self, id_or_name: str) -> Model | None:
        """By ID (deleted ones too), else by the name of a model that is not deleted."""
        row = await self._one(f"{MODEL_SELECT} WHERE m.id = ?", (id_or_name,))
        if row is None:
            row = await self._one(f"{MODEL_SELECT} WHERE m.name = ? AND m.delete_time IS NULL", (id_or_name,))
        return _model(row) if row else None

    async def model_number(self, model_id: str) -> int:
        """The model's number: from 1, in creation order, never reused."""
        row = await self._one("SELECT pk FROM models WHERE id = ?", (model_id,))
        assert row is not None, f"model {model_id} is not stored"
        return int(row[0])

    async def list_secrets(self) -> list[SecretRow]:
        rows = await self._all("SELECT name, ciphertext, create_time, update_time FROM secrets ORDER BY name")
        return [SecretRow(*row) for row in rows]

    async def get_secrets(self, names: Iterable[str]) -> list[SecretRow]:
        names = list(names)
        rows = await self._all(
            f"SELECT name, ciphertext, create_time, update_time FROM secrets "
            f"WHERE name IN ({', '.join('?' for _ in names)})",
            names,
        )
        return [SecretRow(*row) for row in rows]

    async def get_live_model_by_name(self, name: str) -> Model | None:
        row = await self._one(f"{MODEL_SELECT} WHERE m.name = ? AND m.delete_time IS NULL", (name,))
        return _model(row) if row else None

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        row = await self._one(f"{DEPLOYMENT_SELECT} WHERE d.id = ?", (deployment_id,))
        return _deployment(row) if row else None

    async def get_api_key(self, key_id: str) -> ApiKeyRow | None:
        row = await self._one(f"{API_KEY_SELECT} WHERE id = ?", (key_id,))
        return _api_key(row) if row else None

    async def count_live_api_keys(self) -> int:
        row = await self._one("SELECT COUNT(*) FROM api_keys WHERE revoke_time IS NULL")
        return row[0] if row else 0

    async def deployment_names(self, model_id: str) -> set[str]:
        rows = await self._all("SELECT name FROM deployments WHERE model_id = ? AND delete_time IS NULL", (model_id,))
        return {r[0] for r in rows}

    async def model_deployments(self, model_id: str) -> list[Deployment]:
        rows = await self._all(
            f"{DEPLOYMENT_SELECT} WHERE d.model_id = ? AND d.delete_time IS NULL ORDER BY d.pk", (model_id,)
        )
        return [_deployment(r) for r in rows]


class Store(Reads):
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        super().__init__(reader)
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self._listeners: list[Callable[[Change], None]] = []
        # Told the seconds of every committed write transaction (BEGIN to COMMIT): metrics.
        self.on_write: Callable[[float], None] = lambda seconds: None

    @classmethod
    async def open(cls, path: pathlib.Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        await _migrate(writer)
        reader = await _connect(path)
        return cls(writer, reader)

    async def close(self) -> None:
        await self._conn.close()
        await self._writer.close()

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Called after each commit with the IDs of the deployments and models it changed."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Change], None]) -> None:
        self._listeners.remove(listener)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[WriteTx]:
        async with self._write_lock:
            tx = WriteTx(self._writer)
            try:
                # The connection's thread runs statements in order, so even if this task is
                # cancelled mid-way the ROLLBACK below lands after whatever was queued.
                started = time.perf_counter()
                await self._writer.execute("BEGIN IMMEDIATE")
                yield tx
                await self._writer.commit()
                self.on_write(time.perf_counter() - started)
            except BaseException:
                await asyncio.shield(self._writer.rollback())
                raise
        if tx.touched or tx.touched_models or tx.touched_api_keys:
            change = Change(tx.touched, tx.touched_models, tx.touched_api_keys)
            for listener in list(self._listeners):
                listener(change)

    # --- listings -------------------------------------------------------------

    async def list_models(self, page_size: int, page_token: str) -> Page:
        query = "models"
        after = decode_page_token(page_token, query)
        rows = await self._all(
            f"{MODEL_SELECT} WHERE m.delete_time IS NULL AND m.pk > ? ORDER BY m.pk LIMIT ?",
            (after, page_size + 1),
        )
        return _page(rows, page_size, _model, query)

    async def list_deployments(self, model_id: str, show_deleted: bool, page_size: int, page_token: str) -> Page:
        query = json.dumps(["deployments", model_id, show_deleted])
        after = decode_page_token(page_token, query)
        where = ["d.pk > ?"]
        params: list[Any] = [after]
        if model_id:
            where.append("d.model_id = ?")
            params.append(model_id)
        if not show_deleted:
            where.append("d.delete_time IS NULL")
        sql = f"{DEPLOYMENT_SELECT} WHERE {' AND '.join(where)} ORDER BY d.pk LIMIT ?"
        rows = await self._all(sql, (*params, page_size + 1))
        return _page(rows, page_size, _deployment, query)

    async def deployments_to_reconcile(self) -> list[Deployment]:
        """Deployments that should run, or still have replicas that must be stopped."""
        rows = await self._all(
            f"""{DEPLOYMENT_SELECT}
            WHERE (d.delete_time IS NULL AND d.active = 1)
               OR d.state NOT IN ('INACTIVE', 'DEPLOY_FAILED', 'BUILD_FAILED')
               OR d.id IN (SELECT deployment_id FROM replicas WHERE stop_time IS NULL)
            ORDER BY d.pk"""
        )
        return [_deployment(r) for r in rows]

    async def route_snapshot(self) -> RouteSnapshot:
        models = await self._all(f"{MODEL_SELECT} WHERE m.delete_time IS NULL ORDER BY m.pk")
        deployments = await self._all(f"{DEPLOYMENT_SELECT} WHERE d.delete_time IS NULL ORDER BY d.pk")
        deleted_models = await self._all("SELECT id FROM models WHERE delete_time IS NOT NULL")
        deleted_deployments = await self._all("SELECT id FROM deployments WHERE delete_time IS NOT NULL")
        return RouteSnapshot(
            [_model(m) for m in models],
            [_deployment(d) for d in deployments],
            [m[0] for m in deleted_models],
            [d[0] for d in deleted_deployments],
        )

    async def list_api_keys(self, show_revoked: bool, page_size: int, page_token: str) -> Page:
        query = f"api_keys:{int(show_revoked)}"
        after = decode_page_token(page_token, query)
        live = "" if show_revoked else "AND revoke_time IS NULL"
        rows = await self._all(f"{API_KEY_SELECT} WHERE pk > ? {live} ORDER BY pk LIMIT ?", (after, page_size + 1))
        return _page(rows, page_size, _api_key, query)

    async def all_api_keys(self) -> list[ApiKeyRow]:
        return [_api_key(r) for r in await self._all(f"{API_KEY_SELECT} ORDER BY pk")]

    async def api_keys_by_id(self, ids: Iterable[str]) -> list[ApiKeyRow]:
        return await self._by_ids(API_KEY_SELECT, "id", ids, _api_key)

    async def record_api_key_uses(self, last_used: dict[str, float]) -> None:
        """Last-use times of many keys in one transaction (not a route change)."""
        async with self.write() as tx:
            for key_id, used_at in last_used.items():
                await tx.record_api_key_use(key_id, used_at)

    async def _by_ids(self, select: str, column: str, ids: Iterable[str], convert: Callable[[Any], Any]) -> list:
        ids, found = list(ids), []
        for start in range(0, len(ids), 500):  # stay well under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            found += [convert(row) for row in await self._all(f"{select} WHERE {column} IN ({marks})", chunk)]
        return found

    async def models_by_id(self, ids: Iterable[str]) -> list[Model]:
        return await self._by_ids(MODEL_SELECT, "m.id", ids, _model)

    async def deployments_by_id(self, ids: Iterable[str]) -> list[Deployment]:
        return await self._by_ids(DEPLOYMENT_SELECT, "d.id", ids, _deployment)

    async def package_digests_in_use(self) -> set[str]:
        """The packages (and latest patches) of every deployment that is not deleted or still
        has a running replica."""
        rows = await self._all(
            """SELECT package_digest, patched_digest FROM deployments
            WHERE delete_time IS NULL OR id IN (SELECT deployment_id FROM replicas WHERE stop_time IS NULL)"""
        )
        return {digest for row in rows for digest in row if digest}

    async def running_replicas(self) -> list[ReplicaRow]:
        rows = await self._all(
            "SELECT id, deployment_id, revision, pid, port, start_time, ready_time, stop_time "
            "FROM replicas WHERE stop_time IS NULL"
        )
        return [ReplicaRow(*r) for r in rows]

    async def replica_deployment_id(self, replica_id: str) -> str | None:
        """The deployment a replica (running or not) was started for."""
        row = await self._one("SELECT deployment_id FROM replicas WHERE id = ?", (replica_id,))
        return row[0] if row else None

    async def list_usage(self, model_id: str, page_size: int, page_token: str, now: float) -> Page:
        query = json.dumps(["usage", model_id])
        after = decode_page_token(page_token, query)
        where = "d.pk > ?" + (" AND d.model_id = ?" if model_id else "")
        params: list[Any] = [now, after] + ([model_id] if model_id else [])
        rows = await self._all(
            f"""SELECT d.pk, d.model_id, d.id, d.name,
                       COALESCE(SUM(COALESCE(r.stop_time, ?) - r.start_time), 0.0),
                       COUNT(r.id), d.delete_time IS NOT NULL
                FROM deployments d LEFT JOIN replicas r ON r.deployment_id = d.id
                WHERE {where} GROUP BY d.pk ORDER BY d.pk LIMIT ?""",
            (*params, page_size + 1),
        )
        return _page(rows, page_size, lambda r: UsageRow(r[1], r[2], r[3], float(r[4]), r[5], bool(r[6])), query)

    async def replica_intervals(
        self, deployment_ids: list[str], since: float
    ) -> dict[str, list[tuple[float, float | None]]]:
        """(start, stop) of each replica of these deployments that ran after `since`."""
        intervals: dict[str, list[tuple[float, float | None]]] = {d: [] for d in deployment_ids}
        if not deployment_ids:
            return intervals
        marks = ",".join("?" * len(deployment_ids))
        rows = await self._all(
            f"SELECT deployment_id, start_time, stop_time FROM replicas "
            f"WHERE deployment_id IN ({marks}) AND (stop_time IS NULL OR stop_time >= ?) ORDER BY start_time",
            (*deployment_ids, since),
        )
        for deployment_id, start, stop in rows:
            intervals[deployment_id].append((float(start), None if stop is None else float(stop)))
        return intervals

    async def list_events(
        self, model_id: str, deployment_id: str, page_size: int, page_token: str, newest_first: bool = False
    ) -> Page:
        """Events in `seq` order, oldest first unless `newest_first`; the token carries the direction."""
        query = json.dumps(["events", model_id, deployment_id] + (["newest"] if newest_first else []))
        after = decode_page_token(page_token, query)
        where: list[str] = []
        params: list[Any] = []
        if not newest_first:
            where.append("seq > ?")
            params.append(after)
        elif after:
            where.append("seq < ?")
            params.append(after)
        if model_id:
            where.append("model_id = ?")
            params.append(model_id)
        if deployment_id:
            where.append("deployment_id = ?")
            params.append(deployment_id)
        rows = await self._all(
            f"SELECT seq, create_time, model_id, deployment_id, type, message FROM events "
            f"WHERE {' AND '.join(where) or '1'} ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?",
            (*params, page_size + 1),
        )
        return _page(rows, page_size, lambda r: EventRow(*r), query)


class WriteTx(Reads):
    """One BEGIN IMMEDIATE transaction on the writer connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        super().__init__(conn)
        self.touched: set[str] = set()
        self.touched_models: set[str] = set()
        self.touched_api_keys: set[str] = set()

    async def _exec(self, sql: str, params: Iterable[Any] = ()) -> None:
        await self._conn.execute(sql, tuple(params))

    async def put_secret(self, name: str, ciphertext: bytes, now: float) -> None:
        await self._exec(
            "INSERT INTO secrets (name, ciphertext, create_time, update_time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET ciphertext = excluded.ciphertext, update_time = excluded.update_time",
            (name, ciphertext, now, now),
        )

    async def delete_secret(self, name: str) -> bool:
        """Whether there was such a secret."""
        async with self._conn.execute("DELETE FROM secrets WHERE name = ?", (name,)) as cur:
            return cur.rowcount > 0

    async def insert_model(self, name: str, now: float) -> Model:
        model_id = new_id("m")
        await self._exec(
            "INSERT INTO models (id, name, create_time, update_time) VALUES (?, ?, ?, ?)",
            (model_id, name, now, now),
        )
        self.touched_models.add(model_id)
        model = await self.get_model(model_id)
        assert model is not None
        return model

    async def update_model(self, model_id: str, now: float, **values: Any) -> None:
        assignments = ", ".join(f"{k} = ?" for k in values)
        await self._exec(
            f"UPDATE models SET {assignments}, update_time = ? WHERE id = ?", (*values.values(), now, model_id)
        )
        self.touched_models.add(model_id)
        if "production_deployment_id" in values or "delete_time" in values:
            # Production-ness is shown on deployments, so their watchers hear of it.
            rows = await self._all("SELECT id FROM deployments WHERE model_id = ?", (model_id,))
            self.touched.update(r[0] for r in rows)

    async def insert_deployment(self, deployment: Deployment) -> None:
        values = _deployment_values(deployment)
        columns = ", ".join(values)
        placeholders = ", ".join("?" for _ in values)
        await self._exec(f"INSERT INTO deployments ({columns}) VALUES ({placeholders})", values.values())
        self.touched.add(deployment.id)

    async def update_deployment(self, deployment_id: str, **values: Any) -> None:
        if "autoscaling" in values:
            values["autoscaling"] = json.dumps(asdict(values["autoscaling"]), sort_keys=True)
        for key, enum_value in (("kind", Kind), ("state", State)):
            if isinstance(values.get(key), enum_value):
                values[key] = values[key].value
        if "active" in values:
            values["active"] = int(values["active"])
        assignments = ", ".join(f"{k} = ?" for k in values)
        await self._exec(f"UPDATE deployments SET {assignments} WHERE id = ?", (*values.values(), deployment_id))
        self.touched.add(deployment_id)

    async def add_event(self, now: float, model_id: str, deployment_id: str, type_: str, message: str) -> None:
        await self._exec(
            "INSERT INTO events (create_time, model_id, deployment_id, type, message) VALUES (?, ?, ?, ?, ?)",
            (now, model_id, deployment_id, type_, message),
        )

    async def get_request(self, request_id: str) -> tuple[str, str, str] | None:
        """(method, fingerprint, result) of the request first made with this request_id."""
        row = await self._one("SELECT method, fingerprint, result FROM requests WHERE request_id = ?", (request_id,))
        return (row[0], row[1], row[2]) if row else None

    async def save_request(self, request_id: str, method: str, fingerprint: str, result: str, now: float) -> None:
        await self._exec(
            "INSERT INTO requests (request_id, method, fingerprint, result, create_time) VALUES (?, ?, ?, ?, ?)",
            (request_id, method, fingerprint, result, now),
        )

    async def record_package(self, digest: str, size: int, now: float) -> None:
        await self._exec(
            "INSERT OR IGNORE INTO packages (digest, size, create_time) VALUES (?, ?, ?)", (digest, size, now)
        )

    async def insert_api_key(self, row: ApiKeyRow) -> None:
        await self._exec(
            "INSERT INTO api_keys (id, name, scope, model_ids, key_sha256, create_time, expire_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.name, row.scope, json.dumps(row.model_ids), row.key_sha256, row.create_time, row.expire_time),
        )
        self.touched_api_keys.add(row.id)

    async def record_api_key_use(self, key_id: str, used_at: float) -> None:
        await self._exec(
            "UPDATE api_keys SET last_used_time = MAX(COALESCE(last_used_time, 0), ?) WHERE id = ?", (used_at, key_id)
        )

    async def revoke_api_key(self, key_id: str, now: float) -> None:
        await self._exec("UPDATE api_keys SET revoke_time = ? WHERE id = ? AND revoke_time IS NULL", (now, key_id))
        self.touched_api_keys.add(key_id)

    async def insert_replica(self, row: ReplicaRow) -> None:
        await self._exec(
            "INSERT INTO replicas (id, deployment_id, revision, pid, port, start_time, ready_time, stop_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.deployment_id, row.revision, row.pid, row.port, row.start_time, row.ready_time, row.stop_time),
        )

    async def update_replica(self, replica_id: str, **values: Any) -> None:
        assignments = ", ".join(f"{k} = ?" for k in values)
        await self._exec(f"UPDATE replicas SET {assignments} WHERE id = ?", (*values.values(), replica_id))


async def _connect(path: pathlib.Path) -> aiosqlite.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in Store.write).
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = NORMAL")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute("PRAGMA busy_timeout = 5000")
    return conn


async def _migrate(conn: aiosqlite.Connection) -> None:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = row[0] if row else 0
    if version > len(MIGRATIONS):
        raise RuntimeError(f"database schema version {version} is newer than this controller knows ({len(MIGRATIONS)})")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, script.split(";")):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()


def now() -> float:
    return time.time()


__all__ = ["ApiKeyRow", "Change", "Store", "WriteTx", "Page", "ReplicaRow", "UsageRow", "EventRow", "new_id", "now"]
