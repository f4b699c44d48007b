"""Several gateways as real processes (`slipway gateway`, and `--workers 2`) following one
controller (controller lists: test_controller_list.py)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import aiohttp
import grpc
import pytest
from conftest import (
    Api,
    controller_settings,
    data_plane_flags,
    replica_metadata,
    routing_metadata,
    start_gateway,
    stop_or_explain,
    wait_native_proxy,
    wait_until,
)
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from metrics_scrape import scrape
from test_restart import replica_pids

from controller.autoscaler import AutoscalerConfig
from controller.server import Controller
from gateway.server import Gateway, GatewaySettings
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

# Gateway processes on both data planes (tests/conftest.py), but for the Python gateway's workers.
pytestmark = pytest.mark.both_data_planes
WORKERS_ONLY = pytest.mark.python_plane_only(
    reason="`--workers` forks Python gateway processes that share a port; on the native plane HAProxy holds it"
)

MODEL = """
import os, time

class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        pass

    def predict(self, model_input):
        time.sleep(0.01)
        return {{"tag": {tag!r}, "pid": os.getpid()}}
"""
CONFIG = "runtime:\n  predict_concurrency: 32\n"


class GatewayProcess:
    """`slipway gateway` as a process of its own on ports the kernel picks, logging to a file."""

    def __init__(self, controllers: str, token_file: pathlib.Path, log: pathlib.Path, *flags: str) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway",
                "--controller",
                controllers,
                "gateway",
                "--gateway-port",
                "0",
                "--http-port",
                "0",
                "--internal-token-file",
                str(token_file),
                "--insecure-no-auth",
                "--replica-wait",
                "10",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),
        )
        self.grpc_port = self.http_port = 0
        self.gateway_id = ""

    def lines(self, message: str) -> list[dict]:
        found = []
        for line in self.log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == message:
                found.append(entry)
        return found

    async def ready(self, message: str = "gateway listening") -> dict:
        def listening():
            assert self.process.poll() is None, f"the gateway exited: {self.log.read_text()[-2000:]}"
            return next(iter(self.lines(message)), None)

        entry = await wait_until(listening, 60, "the gateway to listen")
        self.gateway_id = entry.get("gateway_id", "")
        self.grpc_port = int(entry["grpc"].rsplit(":", 1)[1])
        self.http_port = int(entry["http"].rsplit(":", 1)[1])
        return entry

    async def retries(self) -> float:
        """Requests sent again to another replica, as the gateway's /metrics count them (on
        the native plane the proxy's retries, mapped to the same name)."""
        scraped = await scrape(f"http://127.0.0.1:{self.http_port}/metrics")
        return sum(scraped.matching("slipway_inference_retries_total").values())

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def children(pid: int) -> set[int]:
    return {int(p) for p in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def traffic(stub, stop: asyncio.Event, callers: int, results: list, failures: list) -> None:
    async def caller():
        while not stop.is_set():
            try:
                request = inf.PredictRequest(target=inf.Target(model_id="m"), payload=b"{}")
                response = await stub.Predict(request, timeout=30, metadata=routing_metadata(request.target))
                results.append(json.loads(response.payload))
            except grpc.aio.AioRpcError as error:
                failures.append(error)

    await asyncio.gather(*(caller() for _ in range(callers)))


async def autoscale(api: Api, deployment_id: str, **settings) -> None:
    deployment = r.Deployment(id=deployment_id)
    for key, value in settings.items():
        setattr(deployment.autoscaling_settings, key, value)
    paths = [f"autoscaling_settings.{k}" for k in settings]
    await api.deployments.UpdateDeployment(
        ds.UpdateDeploymentRequest(deployment=deployment, update_mask=field_mask_pb2.FieldMask(paths=paths))
    )


async def ready_replicas(api: Api, deployment_id: str, count: int):
    deployment = await api.get(deployment_id)
    ready = [rep for rep in deployment.replicas if rep.state == r.REPLICA_STATE_READY]
    return deployment if len(ready) == count == len(deployment.replicas) else None


async def on_every_gateway(controller: Controller, model_id: str, production_id: str, gateways: int) -> None:
    """Wait until the controller's table has this production and every gateway has acknowledged it."""
    routes = controller.routes

    def synced() -> bool:
        # Published versions only (the table is updated before its version is published).
        published = [
            delta.version
            for delta in list(routes._history)
            if any(m.model_id == model_id and m.production_deployment_id == production_id for m in delta.models)
        ]
        following = routes.following()
        return (
            bool(published)
            and len(following) == gateways
            and all(version is not None and version >= published[0] for version in following.values())
        )

    await wait_until(synced, what=f"{production_id} as production on {gateways} gateways")


async def health(replica: r.Replica) -> bool:
    """Is the replica SERVING (not yet told to drain)?"""
    async with grpc.aio.insecure_channel(replica.address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5, metadata=replica_metadata(replica.id)
        )
    return answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def platform(tmp_path):
    settings = controller_settings(tmp_path / "data", autoscaler=AutoscalerConfig(time_scale=0.01))
    controller = await Controller.start(settings)
    async with grpc.aio.insecure_channel(controller.address) as channel:
        api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
        yield controller, api
    await stop_or_explain(controller.stop(), "controller")


def start_gateways(controller: Controller, tmp_path: pathlib.Path, count: int, *flags: str) -> list[GatewayProcess]:
    token = controller.settings.data_dir / "internal.token"
    return [GatewayProcess(controller.address, token, tmp_path / f"gateway-{i}.log", *flags) for i in range(count)]


async def test_promotion_and_scale_down_through_two_gateway_processes_fail_no_request(platform, tmp_path, data_plane):
    controller, api = platform
    gateways = start_gateways(controller, tmp_path, 2, *data_plane_flags(data_plane))
    try:
        for gateway in gateways:
            await gateway.ready()
            if data_plane == "native":
                await wait_native_proxy(gateway.process.pid)
        prod = await api.push(
            api.package("m", source=MODEL.format(tag="one"), extra_config=CONFIG), ds.PUSH_TARGET_PRODUCTION
        )
        await api.wait_production(prod.model.id, prod.deployment.id)
        await on_every_gateway(controller, prod.model.id, prod.deployment.id, 2)
        dev = await api.push(api.package("m", source=MODEL.format(tag="two"), extra_config=CONFIG))
        await api.wait_state(dev.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
        # Both follow and acknowledge: a drain waits for each of them.
        following = await wait_until(
            lambda: (f := controller.routes.following()) and len(f) == 2 and all(f.values()) and f,
            what="both gateways acknowledging",
        )
        assert len(following) == 2

        stop, failures = asyncio.Event(), []
        results: list[list[dict]] = [[], []]
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{gateways[0].grpc_port}") as first,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateways[1].grpc_port}") as second,
        ):
            stubs = [inf_grpc.InferenceServiceStub(first), inf_grpc.InferenceServiceStub(second)]
            load = [asyncio.create_task(traffic(stubs[i], stop, 3, results[i], failures)) for i in range(2)]
            try:
                await wait_until(lambda: all(len(rs) > 10 for rs in results), what="traffic through both gateways")

                # 1. A promotion reaches both gateways.
                promoted = await api.deployments.PromoteDeployment(
                    ds.PromoteDeploymentRequest(deployment_id=dev.deployment.id)
                )
                new_id = promoted.deployment.id
                await api.wait_production(prod.model.id, new_id)
                await wait_until(
                    lambda: all(rs[-1]["tag"] == "two" for rs in results), what="both on the new production"
                )
                # The autoscaler sees the load of both.
                reports = await wait_until(
                    lambda: len(by := controller.load.by_gateway(new_id)) == 2 and by, what="reports of both"
                )
                assert set(reports) == set(following)

                # 2. Scale down under load: no request reaches a replica once it drains.
                await autoscale(api, new_id, min_replica=3, max_replica=3, autoscaling_window=10, scale_down_delay=20)
                await wait_until(lambda: ready_replicas(api, new_id, 3), what="3 replicas")
                counts = [len(rs) for rs in results]
                await wait_until(
                    lambda: all(len(rs) > n + 20 for rs, n in zip(results, counts, strict=True)),
                    what="traffic on 3 replicas",
                )
                retries = [await gateway.retries() for gateway in gateways]
                # The second gateway is paused: the replicas leaving the table must not drain
                # before it has acknowledged a table without them (the first one has).
                replicas = (await api.get(new_id)).replicas
                gateways[1].process.send_signal(signal.SIGSTOP)
                try:
                    await autoscale(api, new_id, min_replica=1, max_replica=1)
                    routes = controller.routes
                    await wait_until(
                        lambda: (
                            len(routes.deployments[new_id].endpoints) == 1
                            and routes.following()[gateways[0].gateway_id] >= routes.version
                        ),
                        what="two replicas out of the table, acknowledged by the running gateway",
                    )
                    assert routes.following()[gateways[1].gateway_id] < routes.version
                    routed = {e.replica_id for e in routes.deployments[new_id].endpoints}
                    for replica in replicas:
                        if replica.id not in routed:
                            assert await health(replica), f"{replica.id} drains while a gateway may route to it"
                finally:
                    gateways[1].process.send_signal(signal.SIGCONT)
                await wait_until(lambda: ready_replicas(api, new_id, 1), what="scale down to 1")
                counts = [len(rs) for rs in results]
                await wait_until(
                    lambda: all(len(rs) > n + 20 for rs, n in zip(results, counts, strict=True)),
                    what="traffic after the scale-down",
                )
            finally:
                stop.set()
                await asyncio.gather(*load)
        assert failures == [], failures[:3]
        assert [await gateway.retries() for gateway in gateways] == retries, "a request reached a draining replica"
        assert len({result["pid"] for result in results[0] + results[1]}) >= 3
    finally:
        for gateway in gateways:
            assert gateway.stop() == 0


@WORKERS_ONLY
async def test_workers_share_one_port_and_a_killed_worker_is_replaced(platform, tmp_path, data_plane):
    controller, api = platform
    (gateway,) = start_gateways(controller, tmp_path, 1, "--workers", "2")
    try:
        listening = await gateway.ready("gateway workers listening")
        workers = set(listening["workers"])
        assert len(workers) == 2 and workers == children(gateway.process.pid)
        pushed = await api.push(
            api.package("m", source=MODEL.format(tag="one"), extra_config=CONFIG), ds.PUSH_TARGET_PRODUCTION
        )
        await api.wait_production(pushed.model.id, pushed.deployment.id)
        did = pushed.deployment.id
        await on_every_gateway(controller, pushed.model.id, did, 2)
        url = f"http://127.0.0.1:{gateway.http_port}/model/{pushed.model.id}/production/predict"

        async def calls(count: int) -> None:
            # A new connection for each call: the kernel spreads connections, not requests.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                for _ in range(count):
                    async with session.post(url, json={}) as response:
                        assert response.status == 200, await response.text()

        def served_by() -> set[int]:
            """Worker pids whose load reports count requests of the deployment (gateway_id holds the pid)."""
            return {
                int(gateway_id.split("-")[-2])
                for gateway_id, load in controller.load.by_gateway(did).items()
                if load.requests_total > 0
            }

        await calls(40)
        assert await wait_until(lambda: served_by() == workers, what="both workers serving"), served_by()

        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        replaced = await wait_until(
            lambda: len(now := children(gateway.process.pid)) == 2 and killed not in now and now,
            what="a new worker",
        )
        (new_worker,) = replaced - workers

        async def new_worker_serves() -> bool:
            await calls(10)
            return new_worker in served_by()

        await wait_until(new_worker_serves, 30, "the new worker serving")
        assert gateway.lines("gateway worker exited; starting another")[0]["pid"] == killed
    finally:
        running = children(gateway.process.pid) if gateway.process.poll() is None else set()
        assert gateway.stop() == 0
    assert not any(pathlib.Path(f"/proc/{pid}").exists() for pid in running), "a worker outlived SIGTERM"


async def test_up_runs_its_gateway_as_workers(tmp_path):
    root = pathlib.Path(__file__).resolve().parent.parent
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slipway",
            "up",
            "--example",
            str(root / "examples" / "echo"),
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
            "--gateway-port",
            "0",
            "--http-port",
            "0",
            "--gateway-workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = []
        for line in process.stdout or ():
            lines.append(line)
            if line.startswith("Serving"):
                break
        curl = next((line for line in lines if "curl -X POST" in line), None)
        assert curl, "".join(lines)

        def answer() -> bytes:
            return subprocess.run(
                ["sh", "-c", curl.split("Or over HTTP:", 1)[1]], capture_output=True, timeout=10
            ).stdout

        # Each worker follows the routes on its own: wait for the development route on both.
        hi = b'{"echo":{"text":"hi"}}'
        await wait_until(lambda: all(answer().replace(b" ", b"") == hi for _ in range(6)), what="both workers routing")
        for _ in range(10):  # new connections: both workers may answer
            assert json.loads(answer()) == {"echo": {"text": "hi"}}
        workers = [
            pid
            for pid in children(process.pid)
            if b"gateway.workers" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        for pid in replica_pids(data_dir, include_fork_servers=True):
            os.kill(pid, signal.SIGKILL)
    assert not any(pathlib.Path(f"/proc/{pid}").exists() for pid in workers)


def test_workers_refuse_a_port_another_process_listens_on(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "slipway", "gateway", "--workers", "2", "--http-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr, result.stderr


async def test_a_single_gateway_does_not_share_a_taken_grpc_port(controller, data_plane):
    first = await start_gateway(controller, data_plane=data_plane)
    try:
        settings = GatewaySettings(
            controller_address=controller.address,
            internal_token=controller.internal_token,
            grpc_port=first.grpc_port,
            http_port=0,
            require_api_keys=False,
            data_plane=data_plane,
        )
        try:
            second = await Gateway.start(settings)
        except RuntimeError as error:
            assert "bind" in str(error).lower(), error
        else:
            await second.stop()
            pytest.fail("a second gateway shares the gRPC port of the first")
    finally:
        await first.stop()
