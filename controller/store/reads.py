"""The controller's reads, in SQL written once for every backend (controller/store/backend.py):
`?` placeholders, and only what SQLite and PostgreSQL both accept. `Reads` serves reads outside
a transaction (controller/store/queries.py's SqlStore) and inside one (write_tx.py's SqlWriteTx);
the row mappings here are shared by both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

from controller.domain import AutoscalingSettings, Deployment, Kind, Model, State
from controller.environments import PRODUCTION, Environment
from controller.store.async_requests import AsyncRequestQueries
from controller.store.backend import Executor, Row
from controller.store.rollout_queries import RolloutReads
from controller.store.rows import (
    ApiKeyRow,
    Page,
    SecretRow,
    encode_page_token,
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


def api_key_of(row: Row) -> ApiKeyRow:
    return ApiKeyRow(row[1], row[2], row[3], tuple(json.loads(row[4])), bytes(row[5]), *row[6:10])


def model_of(row: Row) -> Model:
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


def deployment_of(row: Row) -> Deployment:
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


def environment_of(row: Row) -> Environment:
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


def settings_json(settings: AutoscalingSettings | None) -> str | None:
    return json.dumps(asdict(settings), sort_keys=True) if settings is not None else None


def deployment_values(deployment: Deployment) -> dict[str, Any]:
    values = asdict(deployment)
    for computed in ("is_production", "environment", "promoting_environment"):
        values.pop(computed)
    values["autoscaling"] = json.dumps(values["autoscaling"], sort_keys=True)
    values["kind"] = deployment.kind.value
    values["state"] = deployment.state.value
    values["active"] = int(deployment.active)
    return values


def page_of(rows: Sequence[Any], limit: int, convert: Callable[[Any], Any], query: str) -> Page:
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
        return model_of(row) if row else None

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
        return model_of(row) if row else None

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        row = await self._one(f"{DEPLOYMENT_SELECT} WHERE d.id = ?", (deployment_id,))
        return deployment_of(row) if row else None

    async def get_api_key(self, key_id: str) -> ApiKeyRow | None:
        row = await self._one(f"{API_KEY_SELECT} WHERE id = ?", (key_id,))
        return api_key_of(row) if row else None

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
        return [deployment_of(r) for r in rows]

    async def get_environment(self, model_id: str, name: str) -> Environment | None:
        row = await self._one(
            f"{ENVIRONMENT_SELECT} WHERE model_id = ? AND name = ? AND delete_time IS NULL", (model_id, name)
        )
        return environment_of(row) if row else None

    async def model_environments(self, model_id: str) -> list[Environment]:
        rows = await self._all(
            f"{ENVIRONMENT_SELECT} WHERE model_id = ? AND delete_time IS NULL ORDER BY pk", (model_id,)
        )
        return [environment_of(r) for r in rows]
