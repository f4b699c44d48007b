"""The async request queue's SQL (migration 9: tables `async_requests`, `webhook_secrets`),
written once for both backends like controller/store/queries.py. `AsyncRequestQueries`
runs on whatever executor it is given: the store's reader for reads, a write transaction's
for changes, so the leader's fence (controller/leader.py) and a change commit as one.

Every state change is a conditional UPDATE (`WHERE status = …`, and for a running request
its attempt number and the fencing token it was started under): two controllers, or a
controller and a caller cancelling, can never both move one request, and a result from a
deposed leader's run is not recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from controller.store.backend import Executor, Row
from controller.store.rows import Page, decode_page_token, encode_page_token

QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, EXPIRED, CANCELED = (
    "QUEUED",
    "IN_PROGRESS",
    "SUCCEEDED",
    "FAILED",
    "EXPIRED",
    "CANCELED",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, EXPIRED, CANCELED})
WEBHOOK_PENDING, WEBHOOK_SUCCEEDED, WEBHOOK_FAILED, NO_WEBHOOK = "PENDING", "SUCCEEDED", "FAILED", "NO_WEBHOOK"


@dataclass
class AsyncRequestRow:
    pk: int
    id: str
    model_id: str
    deployment_id: str
    route: str
    priority: int
    status: str
    payload: bytes | None
    content_type: str
    create_time: float
    queue_deadline: float
    start_time: float | None = None
    finish_time: float | None = None
    attempts: int = 0
    lease_token: int | None = None
    output: bytes | None = None
    output_content_type: str = ""
    error_code: str = ""
    error_reason: str = ""
    error_message: str = ""
    webhook_endpoint: str = ""
    webhook_status: str = NO_WEBHOOK
    webhook_attempts: int = 0
    webhook_next_time: float | None = None
    webhook_deadline: float | None = None
    webhook_error: str = ""


COLUMNS = [f.name for f in fields(AsyncRequestRow)]
SELECT = f"SELECT {', '.join(COLUMNS)} FROM async_requests"
# A listing leaves the (bounded, but possibly large) payload and output out.
LIST_COLUMNS = ", ".join("NULL" if c in ("payload", "output") else c for c in COLUMNS)


def _row(row: Row) -> AsyncRequestRow:
    values = list(row)
    for index in (COLUMNS.index("payload"), COLUMNS.index("output")):
        if values[index] is not None:
            values[index] = bytes(values[index])
    return AsyncRequestRow(*values)


@dataclass(frozen=True)
class Outcome:
    """How a run ended: SUCCEEDED with an output, or FAILED with an error."""

    status: str
    output: bytes | None = None
    output_content_type: str = ""
    error_code: str = ""
    error_reason: str = ""
    error_message: str = ""


# What every move to a terminal state also sets: the payload is no longer needed, and a
# webhook (if any) becomes due at once, to be tried until the delivery deadline.
_FINISH = """finish_time = ?, payload = NULL,
    webhook_next_time = CASE WHEN webhook_endpoint <> '' THEN CAST(? AS DOUBLE PRECISION) ELSE NULL END,
    webhook_deadline = CASE WHEN webhook_endpoint <> '' THEN CAST(? AS DOUBLE PRECISION) ELSE NULL END"""


class AsyncRequestQueries:
    def __init__(self, executor: Executor, concurrent_writes: bool = False) -> None:
        self._db = executor
        # Where write transactions overlap (PostgreSQL), a claim skips the rows another
        # claim has locked instead of waiting for them and then finding them taken.
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if concurrent_writes else ""

    # --- reads -------------------------------------------------------------------

    async def get(self, request_id: str) -> AsyncRequestRow | None:
        row = await self._db.fetchone(f"{SELECT} WHERE id = ?", (request_id,))
        return _row(row) if row else None

    async def count_queued(self, deployment_id: str) -> int:
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM async_requests WHERE deployment_id = ? AND status = 'QUEUED'", (deployment_id,)
        )
        return int(row[0]) if row else 0

    async def load(self) -> dict[str, tuple[int, int, str]]:
        """(queued, in progress, model ID) per deployment that has either."""
        counts: dict[str, tuple[int, int, str]] = {}
        # One query per status, each matching its partial index: finished rows are never read.
        for status in (QUEUED, IN_PROGRESS):
            rows = await self._db.fetchall(
                "SELECT deployment_id, model_id, COUNT(*) FROM async_requests WHERE status = ? "
                "GROUP BY deployment_id, model_id",
                (status,),
            )
            for deployment_id, model_id, count in rows:
                queued, running, _ = counts.get(deployment_id, (0, 0, model_id))
                counts[deployment_id] = (
                    (queued + count, running, model_id) if status == QUEUED else (queued, running + count, model_id)
                )
        return counts

    async def any_expired(self, now: float) -> bool:
        """Whether `expire` would change anything (so an idle queue costs no write)."""
        row = await self._db.fetchone(
            "SELECT 1 FROM async_requests WHERE status = 'QUEUED' AND attempts = 0 AND queue_deadline < ? LIMIT 1",
            (now,),
        )
        return row is not None

    async def list_by_model(self, model_id: str, status: str, page_size: int, page_token: str) -> Page:
        """Newest first; `status` "" for all."""
        query = json.dumps(["async_requests", model_id, status])
        before = decode_page_token(page_token, query)
        where: list[str] = ["model_id = ?"]
        params: list[Any] = [model_id]
        if before:
            where.append("pk < ?")
            params.append(before)
        if status:
            where.append("status = ?")
            params.append(status)
        rows = await self._db.fetchall(
            f"SELECT {LIST_COLUMNS} FROM async_requests WHERE {' AND '.join(where)} ORDER BY pk DESC LIMIT ?",
            (*params, page_size + 1),
        )
        items = [_row(r) for r in rows[:page_size]]
        token = encode_page_token(rows[page_size - 1][0], query) if len(rows) > page_size else ""
        return Page(items, token)

    async def webhooks_due(self, now: float, limit: int, exclude: Iterable[str] = ()) -> list[AsyncRequestRow]:
        excluded = list(exclude)
        skip = f"AND id NOT IN ({', '.join('?' for _ in excluded)})" if excluded else ""
        rows = await self._db.fetchall(
            f"{SELECT} WHERE webhook_status = 'PENDING' AND webhook_next_time <= ? {skip} "
            "ORDER BY webhook_next_time LIMIT ?",
            (now, *excluded, limit),
        )
        return [_row(r) for r in rows]

    async def get_webhook_secret(self, model_id: str) -> bytes | None:
        row = await self._db.fetchone("SELECT ciphertext FROM webhook_secrets WHERE model_id = ?", (model_id,))
        return bytes(row[0]) if row else None

    # --- changes (inside a write transaction) -------------------------------------

    async def insert(self, row: AsyncRequestRow) -> None:
        columns = [c for c in COLUMNS if c != "pk"]
        await self._db.execute(
            f"INSERT INTO async_requests ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
            [getattr(row, c) for c in columns],
        )

    async def cancel(self, request_id: str, now: float, webhook_seconds: float) -> bool:
        return (
            await self._db.execute(
                f"UPDATE async_requests SET status = 'CANCELED', {_FINISH} WHERE id = ? AND status = 'QUEUED'",
                (now, now, now + webhook_seconds, request_id),
            )
            > 0
        )

    async def expire(self, now: float, webhook_seconds: float) -> int:
        """Requests never started whose queue time ran out (a request that already ran once
        and was put back after an interruption has left the queue once: it does not expire)."""
        return await self._db.execute(
            f"UPDATE async_requests SET status = 'EXPIRED', {_FINISH}, error_code = 'DEADLINE_EXCEEDED', "
            "error_reason = 'ASYNC_QUEUE_TIME_EXCEEDED', "
            "error_message = 'the request was still queued when its max_time_in_queue_seconds ran out' "
            "WHERE status = 'QUEUED' AND attempts = 0 AND queue_deadline < ?",
            (now, now, now + webhook_seconds, now),
        )

    async def claim(self, deployment_id: str, count: int, token: int, now: float) -> list[AsyncRequestRow]:
        """Up to `count` queued requests of the deployment, lowest priority number first, then
        oldest: marked IN_PROGRESS under `token`, their attempt counted."""
        rows = await self._db.fetchall(
            f"{SELECT} WHERE deployment_id = ? AND status = 'QUEUED' ORDER BY priority, pk LIMIT ?{self._skip_locked}",
            (deployment_id, count),
        )
        claimed = []
        for row in map(_row, rows):
            changed = await self._db.execute(
                "UPDATE async_requests SET status = 'IN_PROGRESS', attempts = attempts + 1, lease_token = ?, "
                "start_time = ? WHERE id = ? AND status = 'QUEUED'",
                (token, now, row.id),
            )
            if changed:
                row.status, row.attempts, row.lease_token, row.start_time = IN_PROGRESS, row.attempts + 1, token, now
                claimed.append(row)
        return claimed

    async def finish(self, row: AsyncRequestRow, outcome: Outcome, now: float, webhook_seconds: float) -> bool:
        """Records the outcome of the run `row` describes, if it is still that run."""
        return (
            await self._db.execute(
                f"UPDATE async_requests SET status = ?, output = ?, output_content_type = ?, error_code = ?, "
                f"error_reason = ?, error_message = ?, {_FINISH} "
                "WHERE id = ? AND status = 'IN_PROGRESS' AND attempts = ? AND lease_token = ?",
                (
                    outcome.status,
                    outcome.output,
                    outcome.output_content_type,
                    outcome.error_code,
                    outcome.error_reason,
                    outcome.error_message,
                    now,
                    now,
                    now + webhook_seconds,
                    row.id,
                    row.attempts,
                    row.lease_token,
                ),
            )
            > 0
        )

    async def put_back(self, row: AsyncRequestRow) -> bool:
        """The run never reached the model (or its replica went away): queued again."""
        return (
            await self._db.execute(
                "UPDATE async_requests SET status = 'QUEUED', lease_token = NULL "
                "WHERE id = ? AND status = 'IN_PROGRESS' AND attempts = ? AND lease_token = ?",
                (row.id, row.attempts, row.lease_token),
            )
            > 0
        )

    async def running(self) -> list[tuple[str, int, int | None]]:
        """(id, attempts, lease token) of every IN_PROGRESS request (read by its partial index)."""
        rows = await self._db.fetchall(
            "SELECT id, attempts, lease_token FROM async_requests WHERE status = 'IN_PROGRESS'"
        )
        return [(r[0], int(r[1]), None if r[2] is None else int(r[2])) for r in rows]

    async def recover(
        self, runs: list[tuple[str, int, int | None]], max_attempts: int, now: float, webhook_seconds: float
    ) -> int:
        """Runs nobody is carrying out any more (a controller that died or was deposed while
        they ran, or a run whose outcome could not be recorded) are queued again, or FAILED
        once they have had `max_attempts`; each only if it is still that run."""
        changed = 0
        for request_id, attempts, token in runs:
            same_run = "id = ? AND status = 'IN_PROGRESS' AND attempts = ? AND " + (
                "lease_token IS NULL" if token is None else "lease_token = ?"
            )
            run = (request_id, attempts) if token is None else (request_id, attempts, token)
            if attempts >= max_attempts:
                changed += await self._db.execute(
                    f"UPDATE async_requests SET status = 'FAILED', {_FINISH}, error_code = 'ABORTED', "
                    "error_reason = 'ASYNC_ATTEMPTS_EXHAUSTED', "
                    "error_message = 'every attempt was interrupted (its replica or the controller went away)' "
                    f"WHERE {same_run}",
                    (now, now, now + webhook_seconds, *run),
                )
            else:
                changed += await self._db.execute(
                    f"UPDATE async_requests SET status = 'QUEUED', lease_token = NULL WHERE {same_run}", run
                )
        return changed

    async def webhook_attempted(self, row: AsyncRequestRow, status: str, next_time: float | None, error: str) -> bool:
        return (
            await self._db.execute(
                "UPDATE async_requests SET webhook_status = ?, webhook_attempts = webhook_attempts + 1, "
                "webhook_next_time = ?, webhook_error = ? "
                "WHERE id = ? AND webhook_status = 'PENDING' AND webhook_attempts = ?",
                (status, next_time, error, row.id, row.webhook_attempts),
            )
            > 0
        )

    async def purge(self, finished_before: float) -> int:
        """Results past their retention whose webhook is no longer pending."""
        return await self._db.execute(
            "DELETE FROM async_requests WHERE finish_time < ? AND webhook_status <> 'PENDING'", (finished_before,)
        )

    async def put_webhook_secret(self, model_id: str, ciphertext: bytes, now: float) -> None:
        await self._db.execute(
            "INSERT INTO webhook_secrets (model_id, ciphertext, create_time, update_time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model_id) DO UPDATE SET ciphertext = excluded.ciphertext, update_time = excluded.update_time",
            (model_id, ciphertext, now, now),
        )

    async def delete_webhook_secret(self, model_id: str) -> bool:
        return await self._db.execute("DELETE FROM webhook_secrets WHERE model_id = ?", (model_id,)) > 0


def as_dict(row: AsyncRequestRow) -> dict[str, Any]:
    return {c: getattr(row, c) for c in COLUMNS}
