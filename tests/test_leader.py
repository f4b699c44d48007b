"""The leader lease (controller/leader.py): one holder at a time across controllers on one
database, a fencing token that grows with every change of holder, and a controller that
has lost the lease starting and stopping no replica — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from conftest import ECHO_MODEL, Api, controller_settings, stop_or_explain, wait_until
from test_restart import replica_pids
from test_store_backends import archive, lifecycles

from controller.domain import PushTarget
from controller.leader import Leadership, LeaseLost, LeaseSettings
from controller.server import Controller
from controller.store import default_database_url, open_store
from slipway.client import SlipwayClient, error_reason
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

pytestmark = pytest.mark.both_backends


async def _nothing() -> None:
    return None


def leadership(store, duration: float = 0.5, renew: float = 0.1) -> Leadership:
    return Leadership(store, LeaseSettings(duration, renew), _nothing, _nothing)


async def test_one_holder_at_a_time_and_the_token_grows_with_each_change(stores):
    a, b = leadership(stores[0]), leadership(stores[1])
    assert await a.try_take() and a.held()
    first = a.token
    assert not await b.try_take() and not b.held()
    assert await a.try_take() and a.token == first  # renewing keeps the token

    # a stops renewing; once its lease has expired b takes it, with a higher token.
    await wait_until(b.try_take, timeout=10, what="b to take the expired lease")
    assert b.token is not None and first is not None and b.token > first
    assert not await a.try_take()
    with pytest.raises(LeaseLost):
        async with stores[0].write() as tx:
            await a.check(tx)
    async with stores[1].write() as tx:
        await b.check(tx)

    # A clean release hands it over at once (no waiting for expiry), again with a new token.
    second = b.token
    await b.release()
    assert await a.try_take() and a.token is not None and a.token > second


async def test_a_controller_that_lost_the_lease_starts_and_stops_no_replica(database, tmp_path):
    # A long lease that is never renewed during the test: the controller believes by its own
    # clock that it still leads (as a paused one does, or one whose clock is off); only the
    # fence in the database stops it.
    settings = controller_settings(tmp_path / "data", database=database, lease=LeaseSettings(600, 300))
    controller = await Controller.start(settings)
    rival = await open_store(settings.database or default_database_url(settings.data_dir))
    try:
        assert controller.leadership.leading
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            first = (await api.push(api.package("first"))).deployment
            await api.wait_state(first.id, r.DEPLOYMENT_STATE_ACTIVE)
            running = replica_pids(settings.data_dir)
            assert len(running) == 1

            # Another controller takes the lease (the first one's has run out by the database's rules).
            async with rival.backend.transaction() as executor:
                await executor.execute("UPDATE leader_lease SET expire_time = 0")
            other = leadership(rival, duration=600, renew=300)
            assert await other.try_take()

            # The API still works on the deposed controller; its reconciler is refused.
            second = (await api.push(api.package("second"))).deployment
            await wait_until(lambda: controller.leadership.refused > 0, timeout=20, what="a refused replica start")
            assert replica_pids(settings.data_dir) == running
            assert {row.deployment_id for row in await rival.running_replicas()} == {first.id}

            # Its next renewal finds the lease gone: it stops reconciling, leaves replicas running.
            await controller.leadership.step()
            assert not controller.leadership.leading and not controller.reconciler.replicas
            assert replica_pids(settings.data_dir) == running

            # The rival lets go; the controller leads again, adopts the running replica (same
            # process, not restarted) and starts the one it was refused.
            await other.release()
            started = time.time()
            await controller.leadership.step()
            assert controller.leadership.leading
            await api.wait_state(second.id, r.DEPLOYMENT_STATE_ACTIVE)
            assert running <= replica_pids(settings.data_dir)
            assert len(replica_pids(settings.data_dir)) == 2
            adopted = [h for h in controller.reconciler.replicas.values() if h.deployment_id == first.id]
            assert [h.pid for h in adopted] == list(running) and adopted[0].start_time < started
    finally:
        await rival.close()
        await stop_or_explain(controller.stop(), "controller")


async def test_a_store_hears_the_commits_of_another_store_on_the_same_database(stores, database, tmp_path):
    if not database:
        pytest.skip("SQLite: one controller per database file, nothing to hear")
    heard: list = []
    await stores[1].follow_other_controllers()
    stores[1].add_listener(heard.append)
    own: list = []
    stores[0].add_listener(own.append)
    package, digest = archive(tmp_path, "heard")
    pushed = await lifecycles(stores, tmp_path)[0].push(package, digest, PushTarget.DEVELOPMENT, "", "")
    await wait_until(
        lambda: any(pushed.deployment.id in c.deployments for c in heard), timeout=10, what="the other store to hear"
    )
    assert any(pushed.deployment.model_id in c.models for c in heard)
    # The store that wrote told its listeners once, in-process, not again through the database.
    assert sum(pushed.deployment.id in c.deployments for c in own) == 1


async def test_announcements_arrive_exactly_as_sent_and_only_when_committed(stores, database):
    if not database:
        pytest.skip("SQLite announces nothing")
    heard: list[str] = []
    await stores[1].backend.listen(heard.append, lambda: None)
    tricky = '{"o": "x", "d": ["it\'s \\\\ a \\\\\' test; COMMIT"]}'
    with pytest.raises(RuntimeError):
        async with stores[0].backend.transaction() as executor:
            await stores[0].backend.announce(executor, ["rolled back"])
            raise RuntimeError("roll back")
    async with stores[0].backend.transaction() as executor:
        await stores[0].backend.announce(executor, [tricky, "second"])
    await wait_until(lambda: len(heard) >= 2, timeout=10, what="the announcements")
    assert heard == [tricky, "second"]


async def test_a_follower_refuses_a_live_reload_before_committing_and_clients_go_to_the_leader(database, tmp_path):
    if not database:
        pytest.skip("SQLite: one controller per database file")
    leader = await Controller.start(controller_settings(tmp_path / "a", database=database))
    follower = await Controller.start(controller_settings(tmp_path / "b", database=database))
    try:
        assert leader.leadership.leading and not follower.leadership.leading
        async with grpc.aio.insecure_channel(leader.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            dev = (await api.push(api.package("live"))).deployment
            await api.wait_state(dev.id, r.DEPLOYMENT_STATE_ACTIVE)
            base = (await api.get(dev.id)).package_digest
        change = [ds.FilePatch(path="model/model.py", content=ECHO_MODEL.format(tag="v2").encode())]

        # The follower runs no replica to reload: refused, and nothing is committed.
        with SlipwayClient(follower.address) as client:
            with pytest.raises(grpc.RpcError) as refused:
                await asyncio.to_thread(client.patch_deployment, dev.id, base, change)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE and error_reason(refused.value) == "NOT_LEADER"
        after = await leader.store.get_deployment(dev.id)
        assert after is not None and after.patched_digest is None and after.package_digest == base

        # A client given both (the follower first) goes on to the leader, which reloads in place.
        with SlipwayClient(f"{follower.address},{leader.address}") as client:
            applied = await asyncio.to_thread(client.patch_deployment, dev.id, base, change)
        assert applied.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, applied
    finally:
        await stop_or_explain(follower.stop(), "follower")
        await stop_or_explain(leader.stop(), "leader")
