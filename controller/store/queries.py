"""All of the controller's SQL, written once for every backend (controller/store/backend.py):
`?` placeholders, and only what SQLite and PostgreSQL both accept. `SqlStore` implements
controller/store/interface.py's `Store`: its reads are reads.py's, its write transactions
write_tx.py's.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from controller.domain import Deployment, Model
from controller.environments import Environment
from controller.store import changes
from controller.store.backend import Backend
from controller.store.locks import ModelNames, TxLocks
from controller.store.reads import (
    API_KEY_SELECT,
    DEPLOYMENT_SELECT,
    ENVIRONMENT_SELECT,
    MODEL_SELECT,
    Reads,
    api_key_of,
    deployment_of,
    environment_of,
    model_of,
    page_of,
)
from controller.store.rows import (
    ApiKeyRow,
    Change,
    EventRow,
    Page,
    ReplicaRow,
    RouteSnapshot,
    UsageRow,
    decode_page_token,
)
from controller.store.write_tx import SqlWriteTx


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
        return page_of(rows, page_size, model_of, query)

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
        return page_of(rows, page_size, deployment_of, query)

    async def list_environments(self, model_id: str, page_size: int, page_token: str) -> Page:
        query = json.dumps(["environments", model_id])
        after = decode_page_token(page_token, query)
        rows = await self._all(
            f"{ENVIRONMENT_SELECT} WHERE model_id = ? AND delete_time IS NULL AND pk > ? ORDER BY pk LIMIT ?",
            (model_id, after, page_size + 1),
        )
        return page_of(rows, page_size, environment_of, query)

    async def environments_of(self, model_ids: Iterable[str]) -> list[Environment]:
        """The live environments of these models (the route table's)."""
        ids, found = list(model_ids), []
        for start in range(0, len(ids), 500):  # stay well under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = await self._all(
                f"{ENVIRONMENT_SELECT} WHERE delete_time IS NULL AND model_id IN ({marks}) ORDER BY pk", chunk
            )
            found += [environment_of(row) for row in rows]
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
        return [deployment_of(r) for r in rows]

    async def route_snapshot(self) -> RouteSnapshot:
        models = await self._all(f"{MODEL_SELECT} WHERE m.delete_time IS NULL ORDER BY m.pk")
        deployments = await self._all(f"{DEPLOYMENT_SELECT} WHERE d.delete_time IS NULL ORDER BY d.pk")
        deleted_models = await self._all("SELECT id FROM models WHERE delete_time IS NOT NULL")
        deleted_deployments = await self._all("SELECT id FROM deployments WHERE delete_time IS NOT NULL")
        environments = await self._all(f"{ENVIRONMENT_SELECT} WHERE delete_time IS NULL ORDER BY pk")
        return RouteSnapshot(
            [model_of(m) for m in models],
            [deployment_of(d) for d in deployments],
            [m[0] for m in deleted_models],
            [d[0] for d in deleted_deployments],
            [environment_of(e) for e in environments],
        )

    async def list_api_keys(self, show_revoked: bool, page_size: int, page_token: str) -> Page:
        query = f"api_keys:{int(show_revoked)}"
        after = decode_page_token(page_token, query)
        live = "" if show_revoked else "AND revoke_time IS NULL"
        rows = await self._all(f"{API_KEY_SELECT} WHERE pk > ? {live} ORDER BY pk LIMIT ?", (after, page_size + 1))
        return page_of(rows, page_size, api_key_of, query)

    async def all_api_keys(self) -> list[ApiKeyRow]:
        return [api_key_of(r) for r in await self._all(f"{API_KEY_SELECT} ORDER BY pk")]

    async def api_keys_by_id(self, ids: Iterable[str]) -> list[ApiKeyRow]:
        return await self._by_ids(API_KEY_SELECT, "id", ids, api_key_of)

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
        return await self._by_ids(MODEL_SELECT, "m.id", ids, model_of)

    async def deployments_by_id(self, ids: Iterable[str]) -> list[Deployment]:
        return await self._by_ids(DEPLOYMENT_SELECT, "d.id", ids, deployment_of)

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
        return page_of(
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
        return page_of(rows, page_size, lambda r: EventRow(*r), query)


__all__ = ["Reads", "SqlStore", "SqlWriteTx"]
