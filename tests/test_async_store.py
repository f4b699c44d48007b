"""The async queue's SQL on both backends (controller/store/async_requests.py): priority
order, conditional moves (a stale attempt or token records nothing), recovery after a
leader's death, expiry, cancel, webhook bookkeeping, retention, paging, and two stores
(two controllers) claiming at once never taking one request twice."""

from __future__ import annotations

import asyncio

import pytest

from controller.store.async_requests import (
    CANCELED,
    EXPIRED,
    FAILED,
    IN_PROGRESS,
    NO_WEBHOOK,
    QUEUED,
    SUCCEEDED,
    WEBHOOK_FAILED,
    WEBHOOK_PENDING,
    AsyncRequestRow,
    Outcome,
)

pytestmark = pytest.mark.both_backends
NOW = 1_000_000.0


def row(request_id: str, priority: int = 0, deployment: str = "d1", webhook: str = "", deadline: float = NOW + 600):
    return AsyncRequestRow(
        pk=0,
        id=request_id,
        model_id="m1",
        deployment_id=deployment,
        route="development",
        priority=priority,
        status=QUEUED,
        payload=b'{"x": 1}',
        content_type="application/json",
        create_time=NOW,
        queue_deadline=deadline,
        webhook_endpoint=webhook,
        webhook_status=WEBHOOK_PENDING if webhook else NO_WEBHOOK,
    )


async def insert(store, *rows: AsyncRequestRow) -> None:
    async with store.write() as tx:
        for item in rows:
            await tx.async_requests.insert(item)


async def test_claims_follow_priority_then_age_and_only_the_current_run_records(stores):
    store = stores[0]
    await insert(store, row("a", 2), row("b", 0), row("c", 1), row("d", 0), row("other", 0, deployment="d2"))
    async with store.write() as tx:
        claimed = await tx.async_requests.claim("d1", 3, token=7, now=NOW)
    assert [c.id for c in claimed] == ["b", "d", "c"]
    assert all(c.status == IN_PROGRESS and c.attempts == 1 and c.lease_token == 7 for c in claimed)
    assert await store.async_requests.load() == {"d1": (1, 3, "m1"), "d2": (1, 0, "m1")}

    first = claimed[0]
    stale = AsyncRequestRow(**{**first.__dict__, "lease_token": 6})
    async with store.write() as tx:
        assert not await tx.async_requests.finish(stale, Outcome(SUCCEEDED, b"1"), NOW, 60)
        assert await tx.async_requests.finish(first, Outcome(SUCCEEDED, b'{"y": 2}', "application/json"), NOW, 60)
        assert not await tx.async_requests.finish(first, Outcome(FAILED), NOW, 60), "recorded twice"
        assert await tx.async_requests.put_back(claimed[1])
    done = await store.async_requests.get("b")
    assert done is not None and (done.status, done.output, done.payload) == (SUCCEEDED, b'{"y": 2}', None)
    again = await store.async_requests.get("d")
    assert again is not None and (again.status, again.attempts) == (QUEUED, 1)


async def test_recovery_requeues_another_leaders_runs_and_fails_exhausted_ones(stores):
    store = stores[0]
    await insert(store, row("x"), row("y"))
    async with store.write() as tx:
        await tx.async_requests.claim("d1", 2, token=1, now=NOW)
    async with store.write() as tx:  # "y" has had its attempts
        await tx.async_requests._db.execute("UPDATE async_requests SET attempts = 3 WHERE id = 'y'")
    runs = await store.async_requests.running()
    assert sorted(runs) == [("x", 1, 1), ("y", 3, 1)]
    async with store.write() as tx:
        assert await tx.async_requests.recover([("x", 2, 1)], 3, NOW, 60) == 0, "not that run: left alone"
        assert await tx.async_requests.recover(runs, max_attempts=3, now=NOW, webhook_seconds=60) == 2
        assert await tx.async_requests.recover(runs, max_attempts=3, now=NOW, webhook_seconds=60) == 0
    x, y = await store.async_requests.get("x"), await store.async_requests.get("y")
    assert x is not None and (x.status, x.lease_token) == (QUEUED, None)
    assert y is not None and (y.status, y.error_reason) == (FAILED, "ASYNC_ATTEMPTS_EXHAUSTED")
    # A request that ran once does not expire when put back; one never started does.
    await insert(store, row("old", deadline=NOW - 1))
    async with store.write() as tx:
        await tx.async_requests._db.execute("UPDATE async_requests SET queue_deadline = ? WHERE id = 'x'", (NOW - 1,))
        await tx.async_requests._db.execute("UPDATE async_requests SET attempts = 1 WHERE id = 'x'")
        assert await tx.async_requests.expire(NOW, 60) == 1
    old = await store.async_requests.get("old")
    assert old is not None and old.status == EXPIRED and old.finish_time == NOW


async def test_cancel_webhooks_retention_and_paging(stores):
    store = stores[0]
    await insert(store, *(row(f"r{n}", webhook="https://example.com/h" if n == 0 else "") for n in range(5)))
    async with store.write() as tx:
        assert await tx.async_requests.cancel("r0", NOW, 60)
        assert not await tx.async_requests.cancel("r0", NOW, 60)
    cancelled = await store.async_requests.get("r0")
    assert cancelled is not None and cancelled.status == CANCELED and cancelled.webhook_next_time == NOW
    assert cancelled.webhook_deadline == NOW + 60
    due = await store.async_requests.webhooks_due(NOW, 10)
    assert [d.id for d in due] == ["r0"] and not await store.async_requests.webhooks_due(NOW, 10, exclude=["r0"])
    async with store.write() as tx:
        assert await tx.async_requests.webhook_attempted(due[0], WEBHOOK_PENDING, NOW + 5, "HTTP 500")
        assert not await tx.async_requests.webhook_attempted(due[0], WEBHOOK_FAILED, None, "stale attempt")
    assert not await store.async_requests.webhooks_due(NOW + 1, 10)
    assert [d.webhook_attempts for d in await store.async_requests.webhooks_due(NOW + 5, 10)] == [1]

    first = await store.async_requests.list_by_model("m1", "", 2, "")
    second = await store.async_requests.list_by_model("m1", "", 2, first.next_page_token)
    assert [i.id for i in first.items] == ["r4", "r3"] and [i.id for i in second.items] == ["r2", "r1"]
    assert all(i.payload is None for i in first.items)
    only = await store.async_requests.list_by_model("m1", CANCELED, 10, "")
    assert [i.id for i in only.items] == ["r0"]
    async with store.write() as tx:  # r0's webhook is still pending: kept past retention
        assert await tx.async_requests.purge(NOW + 1) == 0
        await tx.async_requests.webhook_attempted(
            (await tx.async_requests.get("r0")) or due[0], WEBHOOK_FAILED, None, "gave up"
        )
        assert await tx.async_requests.purge(NOW + 1) == 1
    assert await store.async_requests.get("r0") is None


async def test_two_controllers_claiming_at_once_never_take_one_request_twice(stores):
    await insert(stores[0], *(row(f"c{n}") for n in range(20)))

    async def claim(store, token: int) -> list[str]:
        taken = []
        for _ in range(5):
            async with store.write() as tx:
                taken += [c.id for c in await tx.async_requests.claim("d1", 2, token, NOW)]
        return taken

    a, b = await asyncio.gather(claim(stores[0], 1), claim(stores[1], 2))
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(f"c{n}" for n in range(20))
