"""PostgreSQL writes that overlap (controller/store/locks.py) and a LISTEN that survives a
lost connection (controller/store/pg_listen.py), with two stores on one database as two
controllers have them.

Overlap is shown without timing: one store's transaction on model A is held open; another
store's write to model B commits meanwhile, while its write to model A is seen waiting for
a lock (pg_stat_activity) and, once A commits, is refused by what A wrote."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
import pytest
from conftest import wait_until
from test_store_backends import archive, lifecycles, outcomes

from controller import domain
from controller.domain import AutoscalingSettings, Kind, PushTarget, State
from controller.errors import AlreadyExists, InvalidArgument
from controller.routes import RouteBroadcaster
from controller.store import Change, new_id, open_store
from controller.store.pg_listen import APPLICATION_NAME
from slipway.v1 import deployment_service_pb2 as ds

pytestmark = pytest.mark.both_backends


@pytest.fixture
async def stores(database):
    """Two stores on one PostgreSQL database (what this module tests is PostgreSQL's)."""
    if not database:
        pytest.skip("SQLite runs one write transaction at a time: nothing overlaps")
    opened = [await open_store(database), await open_store(database)]
    yield opened
    for store in opened:
        await store.close()


async def waiting_for_a_lock(database: str) -> int:
    """Sessions of this database waiting for an advisory lock now."""
    conn = await asyncpg.connect(database)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        )
    finally:
        await conn.close()


async def two_models(lifecycle, tmp_path, per_model: int = 2) -> dict[str, list]:
    made: dict[str, list] = {}
    for name in ("a", "b"):
        package, digest = archive(tmp_path, name)
        made[name] = [
            (await lifecycle.push(package, digest, PushTarget.PUBLISHED, f"{name}{n}", "")).deployment
            for n in range(per_model)
        ]
    return made


async def test_writes_to_different_models_overlap_and_to_one_model_wait(stores, database, tmp_path):
    first, second = lifecycles(stores, tmp_path)
    made = await two_models(first, tmp_path)
    (a0, a1), (b0, _) = made["a"], made["b"]
    async with stores[0].write() as tx:
        # Held open by the test: long enough whatever the machine's load (the default is 2 s).
        await tx._db.execute("SET LOCAL idle_in_transaction_session_timeout = '60s'")  # type: ignore[attr-defined]
        await tx.update_deployment(a0.id, name="blue")  # model a's lock, held until the block ends
        # Another controller's write to model b commits while a's transaction is open.
        renamed = await asyncio.wait_for(second.update_deployment(b0.id, "blue", {}, ""), 30)
        assert renamed.deployment.name == "blue"
        # Its write to model a waits for a's lock…
        same_model = asyncio.create_task(second.update_deployment(a1.id, "blue", {}, ""))
        await wait_until(lambda: waiting_for_a_lock(database), timeout=30, what="the write to model a to wait")
        assert not same_model.done()
    # …and once a commits, checks its rule against what a wrote: the name is taken now.
    with pytest.raises(AlreadyExists) as refused:
        await asyncio.wait_for(same_model, 30)
    assert refused.value.reason == "DEPLOYMENT_NAME_TAKEN"
    assert {d.name for d in await stores[1].model_deployments(a0.model_id)} == {"blue", "a1"}


async def test_concurrent_creates_with_one_name_make_one_deployment(stores, tmp_path):
    both = lifecycles(stores, tmp_path)
    package, digest = archive(tmp_path, "m")
    await both[0].push(package, digest, PushTarget.PUBLISHED, "first", "")
    for round_ in range(3):
        ok, refused = await outcomes(
            both[n % 2].push(package, digest, PushTarget.PUBLISHED, f"same-{round_}", "") for n in range(8)
        )
        assert len(ok) == 1, f"round {round_}: {len(ok)} deployments named same-{round_}"
        assert all(isinstance(e, AlreadyExists) and e.reason == "DEPLOYMENT_NAME_TAKEN" for e in refused), refused


async def test_one_request_id_on_two_models_from_two_stores_is_applied_once(stores, tmp_path):
    """Two writes that lock different models share nothing but the request_id: it is claimed
    by its row, so one applies and the other is refused as a reuse (not a raw conflict)."""
    first, second = lifecycles(stores, tmp_path)
    made = await two_models(first, tmp_path, per_model=1)
    for round_ in range(4):
        request_id = f"shared-{round_}"
        ok, refused = await outcomes(
            [
                first.update_deployment(made["a"][0].id, f"a-{round_}", {}, request_id),
                second.update_deployment(made["b"][0].id, f"b-{round_}", {}, request_id),
            ]
        )
        assert len(ok) == 1 and len(refused) == 1, (ok, refused)
        assert isinstance(refused[0], InvalidArgument) and refused[0].reason == "REQUEST_ID_REUSED", refused
        # The same request again, from the other store: the first answer, nothing applied twice.
        winner = ok[0].deployment
        again = await (second if winner.model_id == made["a"][0].model_id else first).update_deployment(
            winner.id, winner.name, {}, request_id
        )
        assert again.deployment == winner


async def test_a_lock_asked_for_out_of_order_is_refused_at_once(stores):
    with pytest.raises(AssertionError, match="lock order"):
        async with stores[0].write() as tx:
            await tx.record_package("0" * 64, 1, 1.0)
            await tx.insert_model("late", 1.0)  # a model's lock after a package's: could deadlock


async def listener_backend(database: str, pid: int | None) -> int | None:
    conn = await asyncpg.connect(database)
    try:
        return await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 "
            "AND pid = $2",
            APPLICATION_NAME,
            pid,
        )
    finally:
        await conn.close()


async def test_a_lost_listen_connection_comes_back_and_every_listener_reads_again(stores, database, tmp_path):
    follower, writer = stores
    await follower.follow_other_controllers()
    heard: list[Change] = []
    follower.add_listener(heard.append)
    routes = RouteBroadcaster(follower, lambda deployment_id: [])
    follower.add_listener(routes.on_store_change)
    await routes.start()
    table = routes.subscribe("gateway-1")
    try:
        assert not (await anext(table)).deployments
        listener = follower.backend.listener  # type: ignore[attr-defined]
        old_pid = listener.server_pid
        assert await listener_backend(database, old_pid) == old_pid
        # The connection is ended while the follower is kept from listening again until the
        # other store has written: that announcement is lost, and only a reset brings it.
        _, release, _ = await terminate_listener_held(follower)
        package, digest = archive(tmp_path, "while-away")
        missed = (
            await lifecycles([writer], tmp_path)[0].push(package, digest, PushTarget.PUBLISHED, "", "")
        ).deployment
        release.set()

        await wait_until(lambda: any(c.reset for c in heard), timeout=30, what="a reset")
        assert listener.relistens == 1 and listener.server_pid != old_pid
        # The route stream sends the whole table again, with what was written meanwhile.
        message = await asyncio.wait_for(anext(table), 30)
        assert message.reset and missed.id in {d.deployment_id for d in message.deployments}
        # Listening again: the next change arrives as an announcement.
        later = (await lifecycles([writer], tmp_path)[0].push(package, digest, PushTarget.PUBLISHED, "", "")).deployment
        await wait_until(lambda: any(later.id in c.deployments for c in heard), timeout=30, what="the next change")
    finally:
        await table.aclose()
        await routes.stop()


async def terminate_listener_held(store) -> tuple[asyncio.Event, asyncio.Event, int | None]:
    """Ends the store's LISTEN backend and keeps it from listening again until `release`
    is set; returns (entered: it has noticed, release, the old backend's pid)."""
    listener = store.backend.listener
    entered, release = asyncio.Event(), asyncio.Event()

    async def held() -> None:
        entered.set()
        await release.wait()

    listener.before_relisten = held
    pid = listener.server_pid
    conn = await asyncpg.connect(store.backend._url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
    await asyncio.wait_for(entered.wait(), 30)
    return entered, release, pid


async def test_a_watch_on_a_controller_that_lost_its_listen_connection_sees_what_it_missed(controller, api, database):
    if not database:
        pytest.skip("SQLite has one controller: nothing to listen for")
    rival = await open_store(database)  # another controller's store
    try:
        async with rival.write() as tx:
            model = await tx.insert_model("watched", 1.0)
            deployment = domain.new_deployment(
                new_id("d"), model.id, "before", Kind.PUBLISHED, AutoscalingSettings(), "0" * 64, 1.0
            )
            await tx.insert_deployment(replace(deployment, active=False, state=State.INACTIVE))
        stream = api.deployments.WatchDeployments(ds.WatchDeploymentsRequest(model_id=model.id))
        first = await asyncio.wait_for(stream.read(), 30)
        assert first.initial and first.deployment.name == "before"
        _, release, _ = await terminate_listener_held(controller.store)
        async with rival.write() as tx:  # announced while nobody on the controller listens
            await tx.update_deployment(deployment.id, name="after", update_time=2.0)
        release.set()
        update = await asyncio.wait_for(stream.read(), 30)
        assert not update.initial and update.deployment.id == deployment.id and update.deployment.name == "after"
        stream.cancel()
    finally:
        await rival.close()
