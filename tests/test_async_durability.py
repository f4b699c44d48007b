"""No accepted async request is lost: the controller (a real process) is SIGKILLed while
requests are queued and running, restarted, and then a replica running one is SIGKILLed;
every request still ends SUCCEEDED, once, with its attempts counted (at-least-once)."""

from __future__ import annotations

import json
import os
import signal

import aiohttp
import grpc
import pytest
from conftest import Api, start_gateway, stop_or_explain, wait_until
from test_restart import ControllerProcess, free_port, replica_pids

from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

SLOW_MODEL = """
import json, time
from starlette.requests import Request


class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input, request: Request):
        attempt = request.headers.get("x-slipway-async-attempt", "")
        with open(model_input["log"], "a") as f:
            f.write(json.dumps({"id": model_input["id"], "attempt": attempt}) + "\\n")
        time.sleep(model_input["sleep"])
        return {"echo": model_input["id"]}
"""
COUNT = 8


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    yield path
    for pid in replica_pids(path, include_fork_servers=True):
        os.kill(pid, signal.SIGKILL)


async def test_sigkill_of_controller_and_replica_loses_no_async_request(data_dir, tmp_path):
    port = free_port()
    controller = ControllerProcess(data_dir, port)
    gateway = None
    log = tmp_path / "runs.log"
    try:
        await controller.ready()

        class Target:  # what start_gateway needs of a controller
            address = controller.address
            internal_token = (data_dir / "internal.token").read_text().strip()

        gateway = await start_gateway(Target)  # type: ignore[arg-type]
        http = f"http://127.0.0.1:{gateway.http_port}"
        session = aiohttp.ClientSession()
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            package = api.package("durable", source=SLOW_MODEL, extra_config="runtime:\n  predict_concurrency: 2\n")
            pushed = await api.push(package)
            deployment = await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)

            ids = []
            for index in range(COUNT):
                body = {"model_input": {"id": f"r{index}", "log": str(log), "sleep": 0.6}}
                async with session.post(
                    f"{http}/model/{deployment.model_id}/development/async_predict", json=body
                ) as a:
                    assert a.status == 202, await a.text()
                    ids.append((await a.json())["request_id"])

            async def statuses() -> dict[str, dict]:
                found = {}
                for request_id in ids:
                    async with session.get(f"{http}/async_request/{request_id}") as response:
                        if response.status == 200:
                            found[request_id] = await response.json()
                return found

            async def running() -> bool:
                return any(s["status"] == "IN_PROGRESS" for s in (await statuses()).values())

            await wait_until(running, 30, "a request to run")
            controller.process.send_signal(signal.SIGKILL)
            controller.process.wait(10)
            controller = ControllerProcess(data_dir, port)
            await controller.ready()

        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            await wait_until(running, 60, "a request to run after the restart")

            async def replica_pid() -> int | None:
                found = await api.get(deployment.id)
                ready = [x.pid for x in found.replicas if x.state == r.REPLICA_STATE_READY]
                return ready[0] if ready else None

            os.kill(await wait_until(replica_pid, 30, "the adopted replica"), signal.SIGKILL)

            async def all_done() -> dict[str, dict] | None:
                found = await statuses()
                done = len(found) == COUNT and all(s["status"] in ("SUCCEEDED", "FAILED") for s in found.values())
                return found if done else None

            final = await wait_until(all_done, 120, "every request to end")
        await session.close()
        assert {s["status"] for s in final.values()} == {"SUCCEEDED"}, final
        assert sorted(s["output"]["echo"] for s in final.values()) == sorted(f"r{i}" for i in range(COUNT))
        ran = [json.loads(line) for line in log.read_text().splitlines()]
        assert {run["id"] for run in ran} == {f"r{i}" for i in range(COUNT)}
        # Runs cut short by the kills ran again, the model told which attempt it was.
        assert any(s["attempts"] >= 2 for s in final.values()), final
        assert all(int(run["attempt"]) >= 1 for run in ran)
        for s in final.values():
            assert s["attempts"] == max(int(run["attempt"]) for run in ran if run["id"] == s["output"]["echo"])
    finally:
        if gateway is not None:
            await stop_or_explain(gateway.stop(), "gateway")
        controller.process.send_signal(signal.SIGTERM)
        try:
            controller.process.wait(30)
        finally:
            controller.process.kill()
