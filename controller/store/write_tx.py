"""One write transaction (SqlWriteTx): every mutation of the store, in the shared SQL, under
the locks of what it names where writes overlap (controller/store/locks.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from controller.domain import AutoscalingSettings, Deployment, Kind, Model, State
from controller.environments import PRODUCTION, Environment
from controller.store.async_requests import AsyncRequestQueries
from controller.store.backend import Executor, Row
from controller.store.lease import LeaseQueries
from controller.store.locks import Rank, TxLocks
from controller.store.reads import (
    Reads,
    deployment_values,
    settings_json,
)
from controller.store.rollout_queries import RolloutWrites
from controller.store.rows import (
    ApiKeyRow,
    ReplicaRow,
    SecretRow,
    new_id,
)


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
        values = deployment_values(deployment)
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
            (model_id, name, settings_json(autoscaling), now, now),
        )
        self.touched_models.add(model_id)

    async def update_environment(self, model_id: str, name: str, now: float, **values: Any) -> None:
        """Sets `deployment_id`, `promoting_deployment_id`, `autoscaling` or `delete_time` of the
        live environment; the deployments it leaves or takes hear of it (their environment shows)."""
        current = await self.get_environment(model_id, name)
        assert current is not None, f"no environment {name} of model {model_id}"
        if "autoscaling" in values:
            values["autoscaling"] = settings_json(values["autoscaling"])
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
