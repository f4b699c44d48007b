"""The SQL of rolling promotions (migration 8): rollout policies per model and environment,
and rollouts. A rollout's indexed columns (model, environment, deployments, state, whether
it is in progress, until when it keeps the previous deployment warm) sit beside its whole
record as JSON (steps, weights, figures). A unique partial index allows one rollout in
progress per model and environment. Every write touches the model, so route tables and
watchers re-read it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any, Protocol

from controller.rollout_rules import (
    ACTIVE_STATES,
    Figures,
    Mode,
    Policy,
    Rollout,
    RolloutState,
    Step,
    Thresholds,
)
from controller.store.backend import Executor, Row
from controller.store.locks import TxLocks
from controller.store.rows import Page, decode_page_token, encode_page_token

ROLLOUT_SELECT = "SELECT pk, record FROM rollouts"


def encode_policy(policy: Policy) -> str:
    return json.dumps(dataclasses.asdict(policy), sort_keys=True)


def decode_policy(text: str) -> Policy:
    data = json.loads(text)
    return Policy(
        mode=Mode(data["mode"]),
        max_surge_percent=data["max_surge_percent"],
        stabilization_seconds=data["stabilization_seconds"],
        steps=tuple(Step(**s) for s in data["steps"]),
        thresholds=Thresholds(**data["thresholds"]),
        keep_previous_warm_seconds=data["keep_previous_warm_seconds"],
    )


def encode_rollout(rollout: Rollout) -> str:
    return json.dumps(dataclasses.asdict(rollout), sort_keys=True)


def _figures(data: dict) -> Figures:
    return Figures(data["requests"], data["errors"], tuple(data["buckets"]))


def decode_rollout(text: str) -> Rollout:
    data = json.loads(text)
    return Rollout(
        **{
            **data,
            "state": RolloutState(data["state"]),
            "steps": tuple(Step(**s) for s in data["steps"]),
            "thresholds": Thresholds(**data["thresholds"]),
            "candidate_step": _figures(data["candidate_step"]),
            "previous_step": _figures(data["previous_step"]),
            "previous_total": _figures(data["previous_total"]),
        }
    )


def _rollout(row: Row) -> Rollout:
    return decode_rollout(row[1])


class RolloutReadsProtocol(Protocol):
    async def get_rollout_policy(self, model_id: str, environment: str) -> tuple[Policy, float] | None: ...
    async def get_rollout(self, rollout_id: str) -> Rollout | None: ...
    async def latest_rollout(self, model_id: str, environment: str) -> Rollout | None: ...
    async def active_rollouts(self, model_ids: Iterable[str] | None = None) -> list[Rollout]: ...
    async def rollouts_to_drive(self, now: float) -> list[Rollout]: ...
    async def list_rollouts(self, model_id: str, environment: str, page_size: int, page_token: str) -> Page: ...


class RolloutWritesProtocol(RolloutReadsProtocol, Protocol):
    async def put_rollout_policy(self, model_id: str, environment: str, policy: Policy, now: float) -> None: ...
    async def insert_rollout(self, rollout: Rollout) -> None: ...
    async def update_rollout(self, rollout: Rollout) -> None: ...


class RolloutReads:
    """Mixed into the store's reads (controller/store/reads.py's Reads)."""

    _db: Executor

    async def get_rollout_policy(self, model_id: str, environment: str) -> tuple[Policy, float] | None:
        row = await self._db.fetchone(
            "SELECT policy, update_time FROM rollout_policies WHERE model_id = ? AND environment = ?",
            (model_id, environment),
        )
        return (decode_policy(row[0]), float(row[1])) if row else None

    async def get_rollout(self, rollout_id: str) -> Rollout | None:
        row = await self._db.fetchone(f"{ROLLOUT_SELECT} WHERE id = ?", (rollout_id,))
        return _rollout(row) if row else None

    async def latest_rollout(self, model_id: str, environment: str) -> Rollout | None:
        row = await self._db.fetchone(
            f"{ROLLOUT_SELECT} WHERE model_id = ? AND environment = ? ORDER BY pk DESC LIMIT 1",
            (model_id, environment),
        )
        return _rollout(row) if row else None

    async def active_rollouts(self, model_ids: Iterable[str] | None = None) -> list[Rollout]:
        """Rollouts in progress (of these models)."""
        if model_ids is None:
            rows = await self._db.fetchall(f"{ROLLOUT_SELECT} WHERE active = 1 ORDER BY pk", ())
            return [_rollout(r) for r in rows]
        ids, found = list(model_ids), []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = await self._db.fetchall(
                f"{ROLLOUT_SELECT} WHERE active = 1 AND model_id IN ({marks}) ORDER BY pk", tuple(chunk)
            )
            found += [_rollout(r) for r in rows]
        return found

    async def rollouts_to_drive(self, now: float) -> list[Rollout]:
        """Rollouts in progress, and succeeded ones still keeping their previous deployment warm."""
        rows = await self._db.fetchall(f"{ROLLOUT_SELECT} WHERE active = 1 OR keep_warm_until > ? ORDER BY pk", (now,))
        return [_rollout(r) for r in rows]

    async def list_rollouts(self, model_id: str, environment: str, page_size: int, page_token: str) -> Page:
        query = json.dumps(["rollouts", model_id, environment])
        after = decode_page_token(page_token, query)
        where: list[str] = ["model_id = ?"]
        params: list[Any] = [model_id]
        if after:
            where.append("pk < ?")
            params.append(after)
        if environment:
            where.append("environment = ?")
            params.append(environment)
        rows = await self._db.fetchall(
            f"{ROLLOUT_SELECT} WHERE {' AND '.join(where)} ORDER BY pk DESC LIMIT ?", (*params, page_size + 1)
        )
        items = [_rollout(r) for r in rows[:page_size]]
        token = encode_page_token(rows[page_size - 1][0], query) if len(rows) > page_size else ""
        return Page(items, token)


class RolloutWrites(RolloutReads):
    """Mixed into the write transaction (controller/store/write_tx.py's SqlWriteTx). A model's
    rollouts and policies are its rows: read and written under its lock (controller/store/locks.py),
    so the engine and a caller's pause or cancel never overwrite each other's record."""

    _db: Executor
    touched_models: set[str]
    locks: TxLocks

    async def get_rollout_policy(self, model_id: str, environment: str) -> tuple[Policy, float] | None:
        await self.locks.model_by_id(model_id)
        return await super().get_rollout_policy(model_id, environment)

    async def get_rollout(self, rollout_id: str) -> Rollout | None:
        found = await super().get_rollout(rollout_id)
        if found is None or not self.locks.active:
            return found
        await self.locks.model_by_id(found.model_id)
        return await super().get_rollout(rollout_id)  # locked now: as committed before us

    async def latest_rollout(self, model_id: str, environment: str) -> Rollout | None:
        await self.locks.model_by_id(model_id)
        return await super().latest_rollout(model_id, environment)

    async def active_rollouts(self, model_ids: Iterable[str] | None = None) -> list[Rollout]:
        if model_ids is not None:
            model_ids = list(model_ids)
            for model_id in model_ids:
                await self.locks.model_by_id(model_id)
        return await super().active_rollouts(model_ids)

    async def put_rollout_policy(self, model_id: str, environment: str, policy: Policy, now: float) -> None:
        await self.locks.model_by_id(model_id)
        await self._db.execute(
            "INSERT INTO rollout_policies (model_id, environment, policy, update_time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model_id, environment) DO UPDATE SET policy = excluded.policy, "
            "update_time = excluded.update_time",
            (model_id, environment, encode_policy(policy), now),
        )

    def _columns(self, rollout: Rollout) -> dict[str, Any]:
        return {
            "state": rollout.state.value,
            "active": int(rollout.state in ACTIVE_STATES),
            "record": encode_rollout(rollout),
            "keep_warm_until": rollout.keep_warm_until,
            "update_time": rollout.update_time,
        }

    async def insert_rollout(self, rollout: Rollout) -> None:
        await self.locks.model_by_id(rollout.model_id)
        values = {
            "id": rollout.id,
            "model_id": rollout.model_id,
            "environment": rollout.environment,
            "candidate_deployment_id": rollout.candidate_id,
            "previous_deployment_id": rollout.previous_id,
            "create_time": rollout.create_time,
            **self._columns(rollout),
        }
        marks = ", ".join("?" for _ in values)
        await self._db.execute(f"INSERT INTO rollouts ({', '.join(values)}) VALUES ({marks})", tuple(values.values()))
        self.touched_models.add(rollout.model_id)

    async def update_rollout(self, rollout: Rollout) -> None:
        await self.locks.model_by_id(rollout.model_id)
        values = self._columns(rollout)
        assignments = ", ".join(f"{k} = ?" for k in values)
        await self._db.execute(f"UPDATE rollouts SET {assignments} WHERE id = ?", (*values.values(), rollout.id))
        self.touched_models.add(rollout.model_id)
