"""Every write the leader makes is fenced (controller/leader.py): the observed state, load
and build failures, live-reload outcomes and events it records (controller/observations.py)
and its replica records (controller/replica_records.py). A table of injected cases: a
controller that lost the lease — by the database's token though its own clock says it
still leads, or by its own clock — is refused each write and the database is unchanged;
the controller that holds the lease now has each write applied. On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from conftest import ECHO_MODEL, wait_until
from test_store_backends import archive, lifecycles

from controller.domain import Deployment, PushTarget, State
from controller.leader import Leadership, LeaseLost, LeaseSettings
from controller.lifecycle import Lifecycle
from controller.observations import Observations
from controller.packages import FilePatch
from controller.replica_records import ReplicaRecords
from controller.store import SqlStore, Store

pytestmark = pytest.mark.both_backends


async def _nothing() -> None:
    return None


@dataclass
class Side:
    """One controller's writers, fenced by its leadership."""

    leadership: Leadership
    observed: Observations
    records: ReplicaRecords


def side(store: Store, settings: LeaseSettings) -> Side:
    leadership = Leadership(store, settings, _nothing, _nothing)
    return Side(
        leadership, Observations(store, leader_write=leadership.fenced_write), ReplicaRecords(store, leadership)
    )


@dataclass
class World:
    store: Store
    lifecycle: Lifecycle
    model_id: str
    published: Deployment  # as the old leader last read it
    development: Deployment  # with a patch waiting to be reloaded
    patched_digest: str
    replica_id: str  # recorded running by the current leader


async def deposed_and_current(stores: list[SqlStore], how: str) -> tuple[Side, Side]:
    """`old` took the lease and lost it to `new` (the token moved on): `how` = "token", its
    own clock still says it leads (a long lease, expired in the database only: a pause or a
    clock that is off); "clock", its own clock says the lease ran out (a pause past it)."""
    if how == "token":
        old, new = side(stores[0], LeaseSettings(600, 300)), side(stores[1], LeaseSettings(600, 300))
        assert await old.leadership.try_take()
        async with stores[1].backend.transaction() as executor:
            await executor.execute("UPDATE leader_lease SET expire_time = 0")
    else:
        old, new = side(stores[0], LeaseSettings(0.3, 0.1)), side(stores[1], LeaseSettings(600, 300))
        assert await old.leadership.try_take()
        await wait_until(lambda: not old.leadership.held(), timeout=10, what="the old lease to run out")
    # (By the database's clock the old lease may outlast the old controller's own reckoning a little.)
    await wait_until(new.leadership.try_take, timeout=10, what="the new leader to take the lease")
    assert new.leadership.token == (old.leadership.token or 0) + 1
    assert old.leadership.held() is (how == "token")
    return old, new


async def world(stores: list[SqlStore], new: Side, tmp_path) -> World:
    lifecycle = lifecycles(stores, tmp_path)[1]
    package, digest = archive(tmp_path, "m")
    published = (await lifecycle.push(package, digest, PushTarget.PUBLISHED, "pub", "")).deployment
    dev = (await lifecycle.push(package, digest, PushTarget.DEVELOPMENT, "", "")).deployment
    assert published is not None and dev is not None
    patch = FilePatch("model.py", ECHO_MODEL.format(tag="v2").encode())
    patched = (await lifecycle.patch_development(dev.id, dev.patch_base_digest, [patch], "")).deployment
    assert patched is not None and patched.patched_digest
    await new.records.starting("r-current", published.id, published.revision, time.time())
    await new.records.started("r-current", 4242, time.time())
    return World(stores[1], lifecycle, published.model_id, published, patched, patched.patched_digest, "r-current")


async def snapshot(w: World) -> tuple:
    """Everything a leader's write could change."""
    store = w.store
    return (
        await store.get_deployment(w.published.id),
        await store.get_deployment(w.development.id),
        await store.get_model(w.model_id),
        (await store.list_events(w.model_id, "", 1000, "")).items,
        await store.running_replicas(),
        await store.replica_intervals([w.published.id], 0),
    )


Write = Callable[[Side, World], Awaitable[object]]


async def promote_then_observe_ready(s: Side, w: World) -> None:
    # A promotion waits on the reconciler's observation; a deposed leader's must not finish it.
    await s.observed.record_observed(w.published, State.ACTIVE, "", 1, 1)


CASES: dict[str, Write] = {
    "observed state": lambda s, w: s.observed.record_observed(w.published, State.ACTIVE, "", 3, 2),
    "observed state finishing a promotion": promote_then_observe_ready,
    "status message": lambda s, w: s.observed.record_observed(w.published, State.DEPLOYING, "slow", 1, 0),
    "load failure": lambda s, w: s.observed.record_load_failure(w.published, "the model raised"),
    "build failure": lambda s, w: s.observed.record_build_failure(w.published, "no wheel for numpy"),
    "live-reload outcome": lambda s, w: s.observed.record_reload(w.development, w.patched_digest, 1, ""),
    "event": lambda s, w: s.observed.record_event(w.model_id, w.published.id, "deployment.building", "step 2"),
    "replica starting": lambda s, w: s.records.starting("r-new", w.published.id, 1, time.time()),
    "replica started (pid)": lambda s, w: s.records.started(w.replica_id, 999, time.time()),
    "replica ready": lambda s, w: s.records.ready(w.replica_id, 8123, time.time()),
    "replica exited": lambda s, w: s.records.exited(w.replica_id, time.time(), 8123),
    "replica stopped (not adopted)": lambda s, w: s.records.stopped(w.replica_id, time.time()),
}
# Refused alike, though they write nothing: the check before a stop (and before stopping
# processes nothing records).
FENCE_ONLY: dict[str, Write] = {"stop a replica": lambda s, w: s.records.fence()}


@pytest.mark.parametrize("how", ["token", "clock"])
@pytest.mark.parametrize("case", [*CASES, *FENCE_ONLY])
async def test_a_deposed_leader_is_refused_each_write_and_the_current_one_is_not(stores, tmp_path, how, case):
    old, new = await deposed_and_current(stores, how)
    w = await world(stores, new, tmp_path)
    if case == "observed state finishing a promotion":
        await w.lifecycle.promote(w.published.id, "")
        promoting = await w.store.get_model(w.model_id)
        assert promoting is not None and promoting.promoting_deployment_id == w.published.id
    write = CASES.get(case) or FENCE_ONLY[case]
    before = await snapshot(w)
    refused = old.leadership.refused

    with pytest.raises(LeaseLost):
        await write(old, w)
    assert old.leadership.refused == refused + 1
    assert await snapshot(w) == before, "a deposed leader's write changed the database"

    await write(new, w)
    if case in CASES:
        assert await snapshot(w) != before, "the current leader's write was not applied"
    if case == "observed state finishing a promotion":
        model = await w.store.get_model(w.model_id)
        assert model is not None and model.production_deployment_id == w.published.id
