"""Two controllers as real processes on one PostgreSQL database (and one data directory:
replicas are local processes, their state and tokens live there), two gateways each
following both (`--controller a,b`), a steady bounded request stream through both, and a
stream of lifecycle calls with request_ids through the SDK given both controllers.

SIGKILL the leader: the other takes the lease within the documented time and adopts the
running replicas (same records, same processes); no request fails; every lifecycle call
that returned OK is in the state, once; the call accepted just before is carried out; no
replica is started twice or left running unrecorded.

SIGSTOP the leader instead: the same, and while it is paused the new leader wakes a
deployment the old one had scaled to zero (so the old one's stale view disagrees with the
record). Resumed, the old leader starts and stops no replica, writes none of what only
the leader writes (observed state, replica records, their events), and stands down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from conftest import DATA_DIRS, Api, new_database, wait_until
from test_gateways import CONFIG, GatewayProcess, autoscale
from test_restart import data_dir, free_port, replica_pids  # noqa: F401  (data_dir: a fixture)

from controller.store import open_store
from slipway.client import SlipwayClient
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

pytestmark = pytest.mark.timeout(300)
ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
LEASE_SECONDS = 2.0
MAX_REQUESTS = 20_000  # the request stream is bounded
MAX_CALLS = 1000  # and so is the stream of lifecycle calls
ECHO = """
import os
class Model:
    def __init__(self, **kwargs):
        pass
    def load(self):
        pass
    def predict(self, model_input):
        return {"pid": os.getpid()}
"""


class Controller:
    def __init__(self, directory: pathlib.Path, database: str, log: pathlib.Path) -> None:
        DATA_DIRS.add(directory)
        self.directory = directory
        self.address = f"127.0.0.1:{free_port()}"
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway",
                "controller",
                "--port",
                self.address.rsplit(":", 1)[1],
                "--controller-http-port",
                "0",
                "--data-dir",
                str(directory),
                "--database",
                database,
                "--insecure-no-auth",
                "--lease-seconds",
                str(LEASE_SECONDS),
                "--lease-renew-seconds",
                "0.5",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),
        )

    async def ready(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)


async def leader_pid(database: str) -> int | None:
    store = await open_store(database)
    try:
        async with store.write() as tx:
            holder = (await tx._lease_row())[0]  # type: ignore[attr-defined]
    finally:
        await store.close()
    return int(holder.split(":")[1]) if holder else None


def api_on(channel: grpc.aio.Channel, tmp_path: pathlib.Path) -> Api:
    return Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)


async def listed_pids(api: Api, deployment_id: str) -> list[int]:
    deployment = await api.get(deployment_id)
    return sorted(rep.pid for rep in deployment.replicas if rep.state == r.REPLICA_STATE_READY)


@pytest.mark.parametrize("how", ["sigkill", "sigstop"])
async def test_the_leader_dies_or_pauses_and_the_other_takes_over(request, data_dir, tmp_path, how):  # noqa: F811
    database = new_database(request, "postgresql")
    store = await open_store(database)
    first = Controller(data_dir, database, tmp_path / "controller-a.log")
    second = None
    gateways: list[GatewayProcess] = []
    stop, calls_stop = asyncio.Event(), threading.Event()
    results: list = []
    failures: list = []
    try:
        await first.ready()
        await wait_until(lambda: leader_pid(database), timeout=30, what="a leader")
        second = Controller(data_dir, database, tmp_path / "controller-b.log")
        await second.ready()
        assert await leader_pid(database) == first.process.pid
        both = f"{first.address},{second.address}"
        async with (
            grpc.aio.insecure_channel(first.address) as on_first,
            grpc.aio.insecure_channel(second.address) as on_second,
        ):
            api_a, api_b = api_on(on_first, tmp_path / "a"), api_on(on_second, tmp_path / "b")
            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            prod = await api_a.push(
                api_a.package("m", source=ECHO, extra_config=CONFIG), target=ds.PUSH_TARGET_PRODUCTION
            )
            await api_a.wait_state(prod.deployment.id, ACTIVE)
            before = await wait_until(lambda: listed_pids(api_a, prod.deployment.id), what="a ready replica")
            # The follower serves the API and sees the leader's writes.
            assert (await api_b.model("m")).production_deployment_id == prod.deployment.id
            idle = None
            if how == "sigstop":
                idle = await scaled_to_zero(api_a, tmp_path)

            # Two gateways, each following both controllers; a steady stream through each.
            for n in range(2):
                gateways.append(GatewayProcess(both, data_dir / "internal.token", tmp_path / f"gw{n}.log"))
            for gateway in gateways:
                await gateway.ready()
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{g.grpc_port}") for g in gateways]
            streams: list[asyncio.Task] = []
            try:
                for gateway, channel in zip(gateways, channels, strict=True):
                    await wait_until(lambda g=gateway: g.lines("following routes"), what="the gateway to follow")
                    await wait_until(lambda c=channel: _answers(c), what="the gateway to route to the replica")
                    stub = inf_grpc.InferenceServiceStub(channel)
                    streams.append(asyncio.create_task(steady(stub, stop, results, failures)))
                # A stream of lifecycle calls, each with a request_id, through a client given both.
                calls = Calls(both, prod.deployment.id, calls_stop)
                streams.append(asyncio.create_task(asyncio.to_thread(calls.run)))
                await wait_until(lambda: len(results) > 40 and len(calls.accepted) > 3, what="both streams")
                # Accepted by the follower just before the leader goes: must be carried out.
                late = await api_b.push(api_b.package("late", source=ECHO), target=ds.PUSH_TARGET_PUBLISHED)
                recorded = await running(store)
                # (late's replica may be on its way: recorded, its process not started yet)
                assert (
                    {row.pid for row in recorded.values() if row.deployment_id == prod.deployment.id}
                    == set(before)
                    <= replica_pids(data_dir)
                )

                killed_at = time.monotonic()
                first.process.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGSTOP)
                await wait_until(
                    lambda: _is(leader_pid(database), second.process.pid), timeout=30, what="the second to lead"
                )
                takeover = time.monotonic() - killed_at
                adopted = await wait_until(lambda: listed_pids(api_b, prod.deployment.id), what="the replica adopted")
                assert adopted == before, "the running replica was restarted, not adopted"
                await api_b.wait_state(late.deployment.id, ACTIVE)
                await wait_until(lambda: listed_pids(api_b, late.deployment.id), what="late's replica")
                accepted_before = len(calls.accepted)
                await wait_until(lambda: len(calls.accepted) > accepted_before + 3, what="calls after the takeover")

                if how == "sigstop":
                    assert idle is not None
                    await resumed_and_stood_down(first, store, api_b, idle, [prod.deployment.id, late.deployment.id])

                count = len(results)
                await wait_until(lambda: len(results) > count + 40, what="traffic after the takeover")
            finally:
                stop.set()
                calls_stop.set()
                await asyncio.gather(*streams, return_exceptions=True)
                for channel in channels:
                    await channel.close()
            assert failures == [], [f"{e.code()}: {e.details()}" for e in failures[:3]]
            assert all(len(g.lines("following routes")) >= 1 for g in gateways)

            # No accepted lifecycle change lost, none applied twice.
            assert calls.errors == [], [f"{e.code()}: {e.details()}" for e in calls.errors[:3]]
            await calls.check(store)

            # No replica started twice or orphaned: the running replicas are adopted (same
            # records, same processes), each deployment has one, and every replica process is recorded.
            after = await running(store)

            def of_prod(rows: dict) -> dict:
                return {rid: row.pid for rid, row in rows.items() if row.deployment_id == prod.deployment.id}

            assert of_prod(after) == of_prod(recorded), "production's replica was not adopted"
            assert all(after[rid].pid == row.pid for rid, row in recorded.items() if rid in after and row.pid)
            assert sorted(row.deployment_id for row in after.values()) == sorted(
                [prod.deployment.id, late.deployment.id] + ([idle] if idle else [])
            )
            assert len((await store.replica_intervals([prod.deployment.id], 0))[prod.deployment.id]) == 1
            assert replica_pids(data_dir) == {row.pid for row in after.values()}, "a replica process nobody records"
            assert await listed_pids(api_b, prod.deployment.id) == before
            if how == "sigstop":
                # The old leader, now a follower, shuts down cleanly and leaves the leader's replicas be.
                first.process.send_signal(signal.SIGTERM)
                assert first.process.wait(30) == 0
                assert replica_pids(data_dir) == {row.pid for row in after.values()}
                assert await listed_pids(api_b, prod.deployment.id) == before
            print(f"takeover after {how}: {takeover:.2f} s (lease {LEASE_SECONDS} s)")
            assert takeover < LEASE_SECONDS + 5
    finally:
        stop.set()
        calls_stop.set()
        await store.close()
        for gateway in gateways:
            gateway.process.kill()
        for controller in (first, second):
            if controller is not None:
                controller.process.send_signal(signal.SIGCONT)
                controller.process.kill()
                controller.process.wait(10)


async def steady(stub, stop: asyncio.Event, results: list, failures: list, callers: int = 2) -> None:
    """A bounded request stream: `callers` callers, each pausing a little between requests."""

    async def caller():
        while not stop.is_set() and len(results) < MAX_REQUESTS:
            try:
                response = await stub.Predict(
                    inf.PredictRequest(target=inf.Target(model_id="m"), payload=b"{}"), timeout=30
                )
                results.append(json.loads(response.payload))
            except grpc.aio.AioRpcError as error:
                failures.append(error)
            await asyncio.sleep(0.01)  # pacing: a steady rate, not synchronisation

    await asyncio.gather(*(caller() for _ in range(callers)))


class Calls:
    """Lifecycle calls one after another (renames, each with its own request_id) through the
    SDK given both controllers: a call the controller it reached cannot answer (gone, or
    paused past the call's timeout) is sent again, same request_id, to the other."""

    def __init__(self, controllers: str, deployment_id: str, stop: threading.Event) -> None:
        self.controllers = controllers
        self.deployment_id = deployment_id
        self.stop = stop
        self.accepted: list[tuple[str, str]] = []  # (request_id, name) answered OK
        self.errors: list[grpc.RpcError] = []

    def run(self) -> None:
        with SlipwayClient(self.controllers, timeout=5) as client:
            for n in range(MAX_CALLS):
                if self.stop.is_set():
                    return
                request_id, name = f"rename-{n}", f"name-{n}"
                try:
                    client.rename_deployment(self.deployment_id, name, request_id)
                except grpc.RpcError as error:
                    self.errors.append(error)
                else:
                    self.accepted.append((request_id, name))
                time.sleep(0.05)  # pacing

    async def check(self, store) -> None:
        """Every accepted call is in the state, once: recorded under its request_id, one
        rename event each, and the last one's name is the deployment's."""
        assert self.accepted
        for request_id, _ in self.accepted:
            # A claim finds the first request's record (and claims nothing); rolled back either way.
            with contextlib.suppress(RolledBack):
                async with store.write() as tx:
                    recorded = await tx.claim_request(request_id, "probe", "", time.time())
                    raise RolledBack
            assert recorded is not None and recorded[0] == "UpdateDeployment", request_id
        deployment = await store.get_deployment(self.deployment_id)
        assert deployment.name == self.accepted[-1][1]
        events = (await store.list_events("", self.deployment_id, 1000, "")).items
        renames = [e for e in events if e.type == "deployment.updated"]
        assert len(renames) == len(self.accepted), "a rename lost or applied twice"


class RolledBack(Exception):
    pass


async def running(store) -> dict:
    return {row.id: row for row in await store.running_replicas()}


async def scaled_to_zero(api: Api, tmp_path: pathlib.Path) -> str:
    """A deployment the leader has scaled to zero (min 0, no delay): the old leader's
    autoscaler remembers it at zero."""
    idle = await api.push(api.package("idle", source=ECHO), target=ds.PUSH_TARGET_PUBLISHED)
    await api.wait_state(idle.deployment.id, ACTIVE)
    await autoscale(api, idle.deployment.id, min_replica=0, scale_down_delay=0)
    await api.wait_state(idle.deployment.id, r.DEPLOYMENT_STATE_SCALED_TO_ZERO, timeout=60)
    return idle.deployment.id


async def leader_state(store, deployment_ids: list[str]) -> tuple:
    """What only the leader writes: observed state, replica records, its events."""
    deployments = [await store.get_deployment(d) for d in deployment_ids]
    observed = [
        (d.id, d.state, d.status_message, d.desired_replicas, d.ready_replicas, d.failed_revision) for d in deployments
    ]
    models = [await store.get_model(d.model_id) for d in deployments]
    events = []
    for d in deployments:
        listed = (await store.list_events("", d.id, 1000, "")).items
        events += [(e.seq, e.type, e.message) for e in listed if e.type != "deployment.updated"]
    return (
        observed,
        [(m.id, m.production_deployment_id, m.promoting_deployment_id) for m in models],
        events,
        sorted(await store.running_replicas(), key=lambda row: row.id),
        await store.replica_intervals(deployment_ids, 0),
    )


async def resumed_and_stood_down(first: Controller, store, api_b: Api, idle: str, others: list[str]) -> None:
    """While the old leader is paused, the new one wakes the deployment the old one scaled to
    zero (so the old one's stale view — zero replicas wanted — disagrees with what the new
    one records). Resumed, the old leader finds its lease gone: it starts and stops no
    replica, writes no observed state, and stands down."""
    await autoscale(api_b, idle, scale_down_delay=3600)
    await api_b.deployments.WakeDeployment(ds.WakeDeploymentRequest(deployment_id=idle), timeout=10)
    await api_b.wait_state(idle, ACTIVE)
    await wait_until(lambda: listed_pids(api_b, idle), what="the woken replica")
    deployment_ids = [*others, idle]

    async def settled() -> bool:  # the new leader has recorded each replica ready (a pass after it is)
        rows = await store.running_replicas()
        return len(rows) == len(deployment_ids) and all(row.ready_time is not None for row in rows)

    await wait_until(settled, what="the new leader to record every replica ready")
    recorded = await leader_state(store, deployment_ids)
    processes = replica_pids(first.directory)
    offset = len(first.log.read_bytes())

    first.process.send_signal(signal.SIGCONT)
    await wait_until(
        lambda: "lost the leader lease" in first.log.read_bytes()[offset:].decode(errors="replace"),
        what="the old leader to stand down",
    )
    resumed = first.log.read_bytes()[offset:].decode(errors="replace")
    assert "started replica" not in resumed and "adopted replica" not in resumed, resumed[-2000:]
    now = await leader_state(store, deployment_ids)
    for part, (was, is_) in enumerate(zip(recorded, now, strict=True)):
        assert is_ == was, f"the old leader wrote after losing the lease (part {part})"
    assert replica_pids(first.directory) == processes
    assert (await api_b.get(idle)).state == ACTIVE


async def _answers(channel: grpc.aio.Channel) -> bool:
    try:
        await inf_grpc.InferenceServiceStub(channel).Predict(
            inf.PredictRequest(target=inf.Target(model_id="m"), payload=b"{}"), timeout=10
        )
    except grpc.aio.AioRpcError:
        return False
    return True


async def _is(value, expected) -> bool:
    return await value == expected
