"""All of the controller's SQL lives here, written once for every backend
(controller/store/backend.py): `?` placeholders, and only what SQLite and PostgreSQL
both accept. `SqlStore` implements controller/store/interface.py's `Store`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

from controller.domain import AutoscalingSettings, Deployment, Kind, Model, State
from controller.environments import PRODUCTION, Environment
from controller.store import changes
from controller.store.async_requests import AsyncRequestQueries
from controller.store.backend import Backend, Executor, Row
from controller.store.lease import LeaseQueries
from controller.store.locks import ModelNames, Rank, TxLocks
from controller.store.rollout_queries import RolloutReads, RolloutWrites
from controller.store.rows import (
    ApiKeyRow,
    Change,
    EventRow,
    Page,
    ReplicaRow,
    RouteSnapshot,
    SecretRow,
    UsageRow,
    decode_page_token,
    encode_page_token,
    new_id,
)

DEPLOYMENT_COLUMNS = """
    d.pk, d.id, d.model_id, d.name, d.kind, d.active, d.autoscaling, d.package_digest, d.revision,
    d.state, d.status_message, d.desired_replicas, d.ready_replicas, d.source_deployment_id,
    d.failed_revision, d.create_time, d.update_time, d.delete_time,
    (SELECT e.name FROM environments e WHERE e.deployment_id = d.id AND e.delete_time IS NULL) AS environment,
    d.patched_digest, d.reload_error,
    (SELECT e.name FROM environments e WHERE e.promoting_deployment_id = d.id AND e.delete_time IS NULL)
"""
DEPLOYMENT_SELECT = f"SELECT {DEPLOYMENT_COLUMNS} FROM deployments d"
_PRODUCTION = (
    "SELECT e.{} FROM environments e WHERE e.model_id = m.id AND e.name = 'production' AND e.delete_time IS NULL"
)
MODEL_SELECT = f"""
    SELECT m.pk, m.id, m.name, ({_PRODUCTION.format("deployment_id")}), m.development_deployment_id,
           ({_PRODUCTION.format("promoting_deployment_id")}), m.next_deployment_number, m.create_time,
           m.update_time, m.delete_time,
           (SELECT COUNT(*) FROM deployments d WHERE d.model_id = m.id AND d.delete_time IS NULL)
    FROM models m
"""
ENVIRONMENT_SELECT = """
    SELECT pk, model_id, name, deployment_id, promoting_deployment_id, autoscaling, create_time, update_time,
           delete_time
    FROM environments
"""


API_KEY_SELECT = (
    "SELECT pk, id, name, scope, model_ids, key_sha256, create_time, last_used_time, expire_time, revoke_time "
    "FROM api_keys"
)


def _api_key(row: Row) -> ApiKeyRow:
    return ApiKeyRow(row[1], row[2], row[3], tuple(json.loads(row[4])), bytes(row[5]), *row[6:10])


def _model(row: Row) -> Model:
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


def _deployment(row: Row) -> Deployment:
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
        is_production=row[18] == PRODUCTION,
        environment=row[18],
        patched_digest=row[19],
        reload_error=row[20],
        promoting_environment=row[21],
    )


def _environment(row: Row) -> Environment:
    return Environment(
        model_id=row[1],
        name=row[2],
        deployment_id=row[3],
        promoting_deployment_id=row[4],
        autoscaling=AutoscalingSettings(**json.loads(row[5])) if row[5] else None,
        create_time=row[6],
        update_time=row[7],
        delete_time=row[8],
    )


def _settings_json(settings: AutoscalingSettings | None) -> str | None:
    return json.dumps(asdict(settings), sort_keys=True) if settings is not None else None


def _deployment_values(deployment: Deployment) -> dict[str, Any]:
    values = asdict(deployment)
    for computed in ("is_production", "environment", "promoting_environment"):
        values.pop(computed)
    values["autoscaling"] = json.dumps(values["autoscaling"], sort_keys=True)
    values["kind"] = deployment.kind.value
    values["state"] = deployment.state.value
    values["active"] = int(deployment.active)
    return values


def _page(rows: Sequence[Any], limit: int, convert: Callable[[Any], Any], query: str) -> Page:
    items = [convert(r) for r in rows[:limit]]
    token = encode_page_token(rows[limit - 1][0], query) if len(rows) > limit else ""
    return Page(items, token)


class Reads(RolloutReads):
    """Queries shared by reads outside a transaction and write transactions."""

    def __init__(self, executor: Executor) -> None:
        self._db = executor
        # The async request queue (controller/store/async_requests.py), on the same executor.
        self.async_requests = AsyncRequestQueries(executor)

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        return await self._db.fetchone(sql, tuple(params))

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        return await self._db.fetchall(sql, tuple(params))

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
        # Sorted here: the database's collation (PostgreSQL's is the locale's) must not decide.
        rows = await self._all("SELECT name, ciphertext, create_time, update_time FROM secrets")
        return sorted((SecretRow(row[0], bytes(row[1]), row[2], row[3]) for row in rows), key=lambda r: r.name)

    async def get_secrets(self, names: Iterable[str]) -> list[SecretRow]:
        names = list(names)
        if not names:
            return []
        rows = await self._all(
            f"SELECT name, ciphertext, create_time, update_time FROM secrets "
            f"WHERE name IN ({', '.join('?' for _ in names)})",
            names,
        )
        return [SecretRow(row[0], bytes(row[1]), row[2], row[3]) for row in rows]

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

    async def deployment_names(self, model_id: str, among: str | None = None) -> set[str]:
        """The names of the model's live deployments (only `among`, if it is one of them)."""
        sql = "SELECT name FROM deployments WHERE model_id = ? AND delete_time IS NULL"
        rows = await (
            self._all(sql, (model_id,)) if among is None else self._all(f"{sql} AND name = ?", (model_id, among))
        )
        return {r[0] for r in rows}

    async def model_deployments(self, model_id: str) -> list[Deployment]:
        rows = await self._all(
            f"{DEPLOYMENT_SELECT} WHERE d.model_id = ? AND d.delete_time IS NULL ORDER BY d.pk", (model_id,)
        )
        return [_deployment(r) for r in rows]

    async def get_environment(self, model_id: str, name: str) -> Environment | None:
        row = await self._one(
            f"{ENVIRONMENT_SELECT} WHERE model_id = ? AND name = ? AND delete_time IS NULL", (model_id, name)
        )
        return _environment(row) if row else None

    async def model_environments(self, model_id: str) -> list[Environment]:
        rows = await self._all(
            f"{ENVIRONMENT_SELECT} WHERE model_id = ? AND delete_time IS NULL ORDER BY pk", (model_id,)
        )
        return [_environment(r) for r in rows]


class SqlStore(Reads):
    def __init__(self, backend: Backend) -> None:
        super().__init__(backend.reader)
        self.backend = backend
        self._listeners: list[Callable[[Change], None]] = []
        self._origin = changes.new_origin()  # what this store announces its commits as
        self._names = ModelNames(backend.reader)  # for the models' locks (controller/store/locks.py)
        # Told the seconds of every committed write transaction (BEGIN to COMMIT): metrics.
        self.on_write: Callable[[float], None] = lambda seconds: None

    @property
    def description(self) -> str:
        return self.backend.description

    async def close(self) -> None:
        await self.backend.close()

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Called after each commit with the IDs of the deployments and models it changed."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Change], None]) -> None:
        self._listeners.remove(listener)

    async def follow_other_controllers(self) -> None:
        """Listeners hear other controllers' commits too (controller/store/changes.py)."""
        await self.backend.listen(self._heard, lambda: self._tell(Change(set(), set(), set(), reset=True)))

    def _heard(self, payload: str) -> None:
        change = changes.decode(payload, self._origin)
        if change is not None:
            self._tell(change)

    def _tell(self, change: Change) -> None:
        for listener in list(self._listeners):
            listener(change)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[SqlWriteTx]:
        async with self.backend.transaction() as executor:
            started = time.perf_counter()
            tx = SqlWriteTx(executor, TxLocks(self.backend, executor, self._names))
            yield tx
            change = Change(tx.touched, tx.touched_models, tx.touched_api_keys)
            if tx.touched or tx.touched_models or tx.touched_api_keys:
                await self.backend.announce(executor, list(changes.encode(self._origin, change)))
        self.on_write(time.perf_counter() - started)
        if tx.touched or tx.touched_models or tx.touched_api_keys:
            self._tell(change)

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

    async def list_environments(self, model_id: str, page_size: int, page_token: str) -> Page:
        query = json.dumps(["environments", model_id])
        after = decode_page_token(page_token, query)
        rows = await self._all(
            f"{ENVIRONMENT_SELECT} WHERE model_id = ? AND delete_time IS NULL AND pk > ? ORDER BY pk LIMIT ?",
            (model_id, after, page_size + 1),
        )
        return _page(rows, page_size, _environment, query)

    async def environments_of(self, model_ids: Iterable[str]) -> list[Environment]:
        """The live environments of these models (the route table's)."""
        ids, found = list(model_ids), []
        for start in range(0, len(ids), 500):  # stay well under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = await self._all(
                f"{ENVIRONMENT_SELECT} WHERE delete_time IS NULL AND model_id IN ({marks}) ORDER BY pk", chunk
            )
            found += [_environment(row) for row in rows]
        return found

    async def deployments_to_reconcile(self) -> list[Deployment]:
        """Deployments that should run, or still have replicas that must be stopped."""
        # A union of two index scans (the partial index deployments_to_reconcile, whose
        # predicate this repeats, and replicas_running), not a scan of every deployment.
        rows = await self._all(
            f"""{DEPLOYMENT_SELECT}
            WHERE d.pk IN (
                SELECT pk FROM deployments
                WHERE (delete_time IS NULL AND active = 1) OR state NOT IN ('INACTIVE', 'DEPLOY_FAILED', 'BUILD_FAILED')
                UNION
                SELECT running.pk FROM replicas r JOIN deployments running ON running.id = r.deployment_id
                WHERE r.stop_time IS NULL)
            ORDER BY d.pk"""
        )
        return [_deployment(r) for r in rows]

    async def route_snapshot(self) -> RouteSnapshot:
        models = await self._all(f"{MODEL_SELECT} WHERE m.delete_time IS NULL ORDER BY m.pk")
        deployments = await self._all(f"{DEPLOYMENT_SELECT} WHERE d.delete_time IS NULL ORDER BY d.pk")
        deleted_models = await self._all("SELECT id FROM models WHERE delete_time IS NOT NULL")
        deleted_deployments = await self._all("SELECT id FROM deployments WHERE delete_time IS NOT NULL")
        environments = await self._all(f"{ENVIRONMENT_SELECT} WHERE delete_time IS NULL ORDER BY pk")
        return RouteSnapshot(
            [_model(m) for m in models],
            [_deployment(d) for d in deployments],
            [m[0] for m in deleted_models],
            [d[0] for d in deleted_deployments],
            [_environment(e) for e in environments],
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
            for key_id, used_at in sorted(last_used.items()):
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
                       COUNT(r.id), d.delete_time IS NOT NULL,
                       (SELECT e.name FROM environments e WHERE e.deployment_id = d.id AND e.delete_time IS NULL)
                FROM deployments d LEFT JOIN replicas r ON r.deployment_id = d.id
                WHERE {where} GROUP BY d.pk, d.model_id, d.id, d.name, d.delete_time ORDER BY d.pk LIMIT ?""",
            (*params, page_size + 1),
        )
        return _page(
            rows, page_size, lambda r: UsageRow(r[1], r[2], r[3], float(r[4]), r[5], bool(r[6]), r[7] or ""), query
        )

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
        self,
        model_id: str,
        deployment_id: str,
        page_size: int,
        page_token: str,
        newest_first: bool = False,
        environment: str = "",
    ) -> Page:
        """Events in `seq` order, oldest first unless `newest_first`; the token carries the direction."""
        query = json.dumps(
            ["events", model_id, deployment_id]
            + (["newest"] if newest_first else [])
            + ([environment] if environment else [])
        )
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
        if environment:
            where.append("environment = ?")
            params.append(environment)
        rows = await self._all(
            f"SELECT seq, create_time, model_id, deployment_id, type, message, environment FROM events "
            f"WHERE {' AND '.join(where) or 'TRUE'} ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?",
            (*params, page_size + 1),
        )
        return _page(rows, page_size, lambda r: EventRow(*r), query)


class SqlWriteTx(LeaseQueries, RolloutWrites, Reads):
    """One write transaction. Where writes overlap (PostgreSQL) each method first takes the
    lock of what it names (controller/store/locks.py): the model of a model or deployment,
    the API keys, the secrets, the lease; SQLite runs one transaction at a time."""

    def __init__(self, executor: Executor, locks: TxLocks) -> None:
        super().__init__(executor)
        self.async_requests = AsyncRequestQueries(executor, concurrent_writes=locks.active)
        self.locks = locks
        self.touched: set[str] = set()
        self.touched_models: set[str] = set()
        self.touched_api_keys: set[str] = set()

    async def _exec(self, sql: str, params: Iterable[Any] = ()) -> int:
        return await self._db.execute(sql, tuple(params))

    # --- reads under the lock of what they read -----------------------------------

    async def get_model(self, id_or_name: str) -> Model | None:
        locks = self.locks
        if locks.active:
            # By its ID's model name, else as a name (a push to a model that does not exist yet).
            await locks.model(await locks.names.of_model(id_or_name) or id_or_name)
        model = await super().get_model(id_or_name)
        if model is not None and not locks.holds_model(model.name):
            await locks.model(model.name)  # it committed meanwhile: locked now, so read again
            model = await super().get_model(id_or_name)
        return model

    async def get_live_model_by_name(self, name: str) -> Model | None:
        await self.locks.model(name)
        return await super().get_live_model_by_name(name)

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        locks = self.locks
        await locks.model_of_deployment(deployment_id)
        deployment = await super().get_deployment(deployment_id)
        if deployment is not None and locks.active:
            name = await locks.names.of_model(deployment.model_id)
            if name is not None and not locks.holds_model(name):
                await locks.model(name)  # it committed meanwhile: locked now, so read again
                deployment = await super().get_deployment(deployment_id)
        return deployment

    async def get_environment(self, model_id: str, name: str) -> Environment | None:
        await self.locks.model_by_id(model_id)
        return await super().get_environment(model_id, name)

    async def model_environments(self, model_id: str) -> list[Environment]:
        await self.locks.model_by_id(model_id)
        return await super().model_environments(model_id)

    async def deployment_names(self, model_id: str, among: str | None = None) -> set[str]:
        await self.locks.model_by_id(model_id)
        return await super().deployment_names(model_id, among)

    async def model_deployments(self, model_id: str) -> list[Deployment]:
        await self.locks.model_by_id(model_id)
        return await super().model_deployments(model_id)

    async def get_api_key(self, key_id: str) -> ApiKeyRow | None:
        await self.locks.take(Rank.API_KEYS, "")
        return await super().get_api_key(key_id)

    async def count_live_api_keys(self) -> int:
        await self.locks.take(Rank.API_KEYS, "")
        return await super().count_live_api_keys()

    async def list_secrets(self) -> list[SecretRow]:
        await self.locks.take(Rank.SECRETS, "")
        return await super().list_secrets()

    async def get_secrets(self, names: Iterable[str]) -> list[SecretRow]:
        await self.locks.take(Rank.SECRETS, "")
        return await super().get_secrets(names)

    async def _lease_row(self, exclusive: bool = False) -> Row:
        await self.locks.take(Rank.LEASE, "", shared=not exclusive)
        return await super()._lease_row(exclusive)

    async def _exec_lease(self, sql: str, params: tuple[Any, ...]) -> None:
        await self.locks.take(Rank.LEASE, "")
        await super()._exec_lease(sql, params)

    # --- writes -------------------------------------------------------------------

    async def put_secret(self, name: str, ciphertext: bytes, now: float) -> None:
        await self.locks.take(Rank.SECRETS, "")
        await self._exec(
            "INSERT INTO secrets (name, ciphertext, create_time, update_time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET ciphertext = excluded.ciphertext, update_time = excluded.update_time",
            (name, ciphertext, now, now),
        )

    async def delete_secret(self, name: str) -> bool:
        """Whether there was such a secret."""
        await self.locks.take(Rank.SECRETS, "")
        return await self._exec("DELETE FROM secrets WHERE name = ?", (name,)) > 0

    async def insert_model(self, name: str, now: float) -> Model:
        await self.locks.model(name)
        model_id = new_id("m")
        self.locks.names.name_of_model.remember(model_id, name)
        await self._exec(
            "INSERT INTO models (id, name, create_time, update_time) VALUES (?, ?, ?, ?)",
            (model_id, name, now, now),
        )
        await self.insert_environment(model_id, PRODUCTION, None, now)
        self.touched_models.add(model_id)
        model = await self.get_model(model_id)
        assert model is not None
        return model

    async def update_model(self, model_id: str, now: float, **values: Any) -> None:
        await self.locks.model_by_id(model_id)
        assignments = ", ".join(f"{k} = ?" for k in values)
        await self._exec(
            f"UPDATE models SET {assignments}, update_time = ? WHERE id = ?", (*values.values(), now, model_id)
        )
        self.touched_models.add(model_id)
        if "delete_time" in values:
            rows = await self._all("SELECT id FROM deployments WHERE model_id = ?", (model_id,))
            self.touched.update(r[0] for r in rows)

    async def insert_deployment(self, deployment: Deployment) -> None:
        self.locks.names.model_of_deployment.remember(deployment.id, deployment.model_id)
        await self.locks.model_by_id(deployment.model_id)
        values = _deployment_values(deployment)
        columns = ", ".join(values)
        placeholders = ", ".join("?" for _ in values)
        await self._exec(f"INSERT INTO deployments ({columns}) VALUES ({placeholders})", values.values())
        self.touched.add(deployment.id)

    async def update_deployment(self, deployment_id: str, **values: Any) -> None:
        await self.locks.model_of_deployment(deployment_id)
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

    async def insert_environment(
        self, model_id: str, name: str, autoscaling: AutoscalingSettings | None, now: float
    ) -> None:
        await self.locks.model_by_id(model_id)
        await self._exec(
            "INSERT INTO environments (model_id, name, autoscaling, create_time, update_time) VALUES (?, ?, ?, ?, ?)",
            (model_id, name, _settings_json(autoscaling), now, now),
        )
        self.touched_models.add(model_id)

    async def update_environment(self, model_id: str, name: str, now: float, **values: Any) -> None:
        """Sets `deployment_id`, `promoting_deployment_id`, `autoscaling` or `delete_time` of the
        live environment; the deployments it leaves or takes hear of it (their environment shows)."""
        current = await self.get_environment(model_id, name)
        assert current is not None, f"no environment {name} of model {model_id}"
        if "autoscaling" in values:
            values["autoscaling"] = _settings_json(values["autoscaling"])
        assignments = ", ".join(f"{k} = ?" for k in values)
        await self._exec(
            f"UPDATE environments SET {assignments}, update_time = ? "
            "WHERE model_id = ? AND name = ? AND delete_time IS NULL",
            (*values.values(), now, model_id, name),
        )
        self.touched_models.add(model_id)
        for key in ("deployment_id", "promoting_deployment_id"):
            for deployment_id in (getattr(current, key), values.get(key)):
                if deployment_id:
                    self.touched.add(deployment_id)
        if "delete_time" in values:
            self.touched.update(d for d in (current.deployment_id, current.promoting_deployment_id) if d)

    async def add_event(
        self, now: float, model_id: str, deployment_id: str, type_: str, message: str, environment: str = ""
    ) -> None:
        await self.locks.model_by_id(model_id)  # a model's events are numbered in commit order
        await self._exec(
            "INSERT INTO events (create_time, model_id, deployment_id, type, message, environment) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (now, model_id, deployment_id, type_, message, environment),
        )

    async def claim_request(
        self, request_id: str, method: str, fingerprint: str, now: float
    ) -> tuple[str, str, str] | None:
        """Claims the request_id for this transaction (its row, with the result still to
        come: save_request), or (method, fingerprint, result) of the request that first
        made it. A transaction claiming one another has claimed waits for it to end."""
        self.locks.note(Rank.REQUEST, request_id)
        claimed = await self._exec(
            "INSERT INTO requests (request_id, method, fingerprint, result, create_time) VALUES (?, ?, ?, '', ?) "
            "ON CONFLICT (request_id) DO NOTHING",
            (request_id, method, fingerprint, now),
        )
        if claimed:
            return None
        row = await self._one("SELECT method, fingerprint, result FROM requests WHERE request_id = ?", (request_id,))
        assert row is not None, "a request row is never removed"
        return (row[0], row[1], row[2])

    async def save_request(self, request_id: str, result: str) -> None:
        """The result of the request this transaction claimed (claim_request)."""
        await self._exec("UPDATE requests SET result = ? WHERE request_id = ?", (result, request_id))

    async def record_package(self, digest: str, size: int, now: float) -> None:
        self.locks.note(Rank.PACKAGE, digest)
        await self._exec(
            "INSERT INTO packages (digest, size, create_time) VALUES (?, ?, ?) ON CONFLICT (digest) DO NOTHING",
            (digest, size, now),
        )

    async def insert_api_key(self, row: ApiKeyRow) -> None:
        await self.locks.take(Rank.API_KEYS, "")
        await self._exec(
            "INSERT INTO api_keys (id, name, scope, model_ids, key_sha256, create_time, expire_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.name, row.scope, json.dumps(row.model_ids), row.key_sha256, row.create_time, row.expire_time),
        )
        self.touched_api_keys.add(row.id)

    async def record_api_key_use(self, key_id: str, used_at: float) -> None:
        await self.locks.take(Rank.API_KEYS, "")
        await self._exec(
            "UPDATE api_keys SET last_used_time = ? WHERE id = ? AND (last_used_time IS NULL OR last_used_time < ?)",
            (used_at, key_id, used_at),
        )

    async def revoke_api_key(self, key_id: str, now: float) -> None:
        await self.locks.take(Rank.API_KEYS, "")
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


__all__ = ["Reads", "SqlStore", "SqlWriteTx"]
