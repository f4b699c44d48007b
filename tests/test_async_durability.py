"""No accepted async request is lost: with requests queued and running, the controller, the
gateway and a replica — each a real process — are SIGKILLed in turn and the first two
restarted; every accepted request still ends SUCCEEDED, once, with its attempts counted
(at-least-once: a run cut short ran again, the model told which attempt it was)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import aiohttp
import grpc
import pytest
from conftest import Api, wait_until
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
FIRST, LATER = 8, 4


class GatewayProcess:
    def __init__(self, controller: str, data_dir, grpc_port: int, http_port: int) -> None:
        self.http = f"http://127.0.0.1:{http_port}"
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "slipway", "--controller", controller, "gateway"),
                *("--gateway-port", str(grpc_port), "--http-port", str(http_port)),
                *("--internal-token-file", str(data_dir / "internal.token"), "--insecure-no-auth"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(data_dir.parent / f"gateway-{http_port}.log", "ab"),
        )

    async def ready(self, session: aiohttp.ClientSession) -> None:
        async def routed() -> bool:
            try:
                async with session.get(f"{self.http}/async_request/areq-none") as response:
                    return response.status == 404  # answered by the controller: routes and queue reachable
            except aiohttp.ClientError:
                return False

        await wait_until(routed, 30, "the gateway to serve")


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    yield path
    for pid in replica_pids(path, include_fork_servers=True):
        os.kill(pid, signal.SIGKILL)


async def test_sigkill_of_controller_gateway_and_replica_loses_no_async_request(data_dir, tmp_path):
    port, grpc_port, http_port = free_port(), free_port(), free_port()
    controller = ControllerProcess(data_dir, port)
    gateway: GatewayProcess | None = None
    log = tmp_path / "runs.log"
    ids: list[str] = []
    session = aiohttp.ClientSession()
    try:
        await controller.ready()
        gateway = GatewayProcess(controller.address, data_dir, grpc_port, http_port)
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            package = api.package("durable", source=SLOW_MODEL, extra_config="runtime:\n  predict_concurrency: 2\n")
            deployment = await api.wait_state((await api.push(package)).deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
        await gateway.ready(session)

        async def submit(count: int) -> None:
            assert gateway is not None
            for _ in range(count):
                body = {"model_input": {"id": f"r{len(ids)}", "log": str(log), "sleep": 0.6}}
                url = f"{gateway.http}/model/{deployment.model_id}/development/async_predict"
                async with session.post(url, json=body) as accepted:
                    assert accepted.status == 202, await accepted.text()
                    ids.append((await accepted.json())["request_id"])

        async def statuses() -> dict[str, dict]:
            assert gateway is not None
            found = {}
            for request_id in ids:
                try:
                    async with session.get(f"{gateway.http}/async_request/{request_id}") as response:
                        if response.status == 200:
                            found[request_id] = await response.json()
                except aiohttp.ClientError:
                    pass
            return found

        async def running() -> bool:
            return any(s["status"] == "IN_PROGRESS" for s in (await statuses()).values())

        await submit(FIRST)
        await wait_until(running, 30, "a request to run")
        controller.process.send_signal(signal.SIGKILL)
        controller.process.wait(10)
        controller = ControllerProcess(data_dir, port)
        await controller.ready()
        await wait_until(running, 60, "a request to run after the controller's restart")

        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)
        gateway = GatewayProcess(controller.address, data_dir, grpc_port, http_port)
        await gateway.ready(session)
        await submit(LATER)

        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)

            async def replica_pid() -> int | None:
                found = await api.get(deployment.id)
                ready = [x.pid for x in found.replicas if x.state == r.REPLICA_STATE_READY]
                return ready[0] if ready and await running() else None

            os.kill(await wait_until(replica_pid, 30, "the adopted replica, running one"), signal.SIGKILL)

        async def all_done() -> dict[str, dict] | None:
            found = await statuses()
            done = len(found) == len(ids) and all(s["status"] in ("SUCCEEDED", "FAILED") for s in found.values())
            return found if done else None

        final = await wait_until(all_done, 120, "every request to end")
        names = {f"r{i}" for i in range(FIRST + LATER)}
        assert {s["status"] for s in final.values()} == {"SUCCEEDED"}, final
        assert sorted(s["output"]["echo"] for s in final.values()) == sorted(names)
        ran = [json.loads(line) for line in log.read_text().splitlines()]
        assert {run["id"] for run in ran} == names
        assert any(s["attempts"] >= 2 for s in final.values()), final
        for s in final.values():
            assert s["attempts"] == max(int(run["attempt"]) for run in ran if run["id"] == s["output"]["echo"])
    finally:
        await session.close()
        for process in (gateway.process if gateway else None, controller.process):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                finally:
                    process.kill()
