"""Two controllers as real processes on one PostgreSQL database (and one data directory:
replicas are local processes, their state and tokens live there), one gateway following
both (`--controller a,b`), a steady stream of requests. SIGKILL the leader: the other takes
the lease within the documented time, adopts the running replicas (same processes), carries
out the lifecycle calls accepted meanwhile; no request fails, no replica is started twice or
left orphaned. SIGSTOP the leader instead: once resumed it has lost the lease and acts on
nothing (the fence)."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import subprocess
import sys
import time

import grpc
import pytest
from conftest import DATA_DIRS, Api, new_database, wait_until
from test_gateways import CONFIG, GatewayProcess, traffic
from test_restart import data_dir, free_port, replica_pids  # noqa: F401  (data_dir: a fixture)

from controller.store import open_store
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

pytestmark = pytest.mark.timeout(300)
ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
LEASE_SECONDS = 2.0
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
    first = Controller(data_dir, database, tmp_path / "controller-a.log")
    await first.ready()
    await wait_until(lambda: leader_pid(database), timeout=30, what="a leader")
    second = Controller(data_dir, database, tmp_path / "controller-b.log")
    gateway = None
    stop = asyncio.Event()
    results: list = []
    failures: list = []
    try:
        await second.ready()
        assert await leader_pid(database) == first.process.pid
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

            gateway = GatewayProcess(
                f"{first.address},{second.address}", data_dir / "internal.token", tmp_path / "gw.log"
            )
            await gateway.ready()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
                await wait_until(lambda: gateway.lines("following routes"), what="the gateway to follow routes")
                await wait_until(lambda: _answers(channel), what="the gateway to route to the replica")
                stream = asyncio.create_task(
                    traffic(inf_grpc.InferenceServiceStub(channel), stop, 4, results, failures)
                )
                await wait_until(lambda: len(results) > 20, what="traffic through the gateway")
                # Accepted by the follower just before the leader goes: must be carried out.
                late = await api_b.push(api_b.package("late", source=ECHO), target=ds.PUSH_TARGET_PUBLISHED)

                killed_at = time.monotonic()
                first.process.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGSTOP)
                await wait_until(
                    lambda: _is(leader_pid(database), second.process.pid), timeout=30, what="the second to lead"
                )
                takeover = time.monotonic() - killed_at
                adopted = await wait_until(lambda: listed_pids(api_b, prod.deployment.id), what="the replica adopted")
                assert adopted == before, "the running replica was restarted, not adopted"
                await api_b.wait_state(late.deployment.id, ACTIVE)
                late_pids = await wait_until(lambda: listed_pids(api_b, late.deployment.id), what="late's replica")

                if how == "sigstop":
                    # Resumed, the old leader finds its lease gone and acts on nothing.
                    first.process.send_signal(signal.SIGCONT)
                    await wait_until(
                        lambda: "lost the leader lease" in first.log.read_text(), what="the old leader to stand down"
                    )
                    assert await leader_pid(database) == second.process.pid

                count = len(results)
                await wait_until(lambda: len(results) > count + 50, what="traffic after the takeover")
                stop.set()
                await stream
            assert failures == [], [f"{e.code()}: {e.details()}" for e in failures[:3]]
            assert replica_pids(data_dir) == set(before) | set(late_pids), "a replica was started twice or orphaned"
            assert await listed_pids(api_b, prod.deployment.id) == before
            if how == "sigstop":
                # The old leader, now a follower, shuts down cleanly and leaves the leader's replicas be.
                first.process.send_signal(signal.SIGTERM)
                assert first.process.wait(30) == 0
                assert replica_pids(data_dir) == set(before) | set(late_pids)
                assert await listed_pids(api_b, prod.deployment.id) == before
            print(f"takeover after {how}: {takeover:.2f} s (lease {LEASE_SECONDS} s)")
            assert takeover < LEASE_SECONDS + 5
    finally:
        stop.set()
        if gateway is not None:
            gateway.process.kill()
        for controller in (first, second):
            controller.process.send_signal(signal.SIGCONT)
            controller.process.kill()
            controller.process.wait(10)


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
