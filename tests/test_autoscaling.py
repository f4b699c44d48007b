"""Autoscaling, scale to zero and wake, and zero-downtime changes with real
processes and short windows (operator time scale 0.01: a 60 s window is 0.6 s)."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import grpc
import pytest
from conftest import Api, controller_settings, routing_metadata, wait_native_proxy, wait_until
from google.protobuf import field_mask_pb2
from metrics_scrape import scrape

from controller.autoscaler import AutoscalerConfig
from controller.server import Controller
from gateway.server import Gateway, GatewaySettings
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

# Zero downtime and scale to zero through a gateway run on both data planes (tests/conftest.py).
pytestmark = pytest.mark.both_data_planes

SLOW_MODEL = """
import pathlib, time

class Model:
    def __init__(self, **kwargs):
        self.gate = pathlib.Path({gate!r})

    def load(self):
        while not self.gate.exists():
            time.sleep(0.01)

    def predict(self, model_input):
        time.sleep({seconds})
        return {{"tag": {tag!r}, "pid": __import__("os").getpid()}}
"""
CONFIG = "runtime:\n  predict_concurrency: 32\n"


class Platform:
    def __init__(self, api: Api, gateway: Gateway, stub: inf_grpc.InferenceServiceStub, tmp) -> None:
        self.api, self.gateway, self.stub, self.tmp = api, gateway, stub, tmp
        self.gate = tmp / "gate"
        self.gate.touch()

    def package(self, name: str, tag: str = "v1", seconds: float = 0.05):
        return self.api.package(
            name, source=SLOW_MODEL.format(gate=str(self.gate), seconds=seconds, tag=tag), extra_config=CONFIG
        )

    async def call(self, **target) -> dict:
        request = inf.PredictRequest(target=inf.Target(**target), payload=b"{}")
        response = await self.stub.Predict(request, timeout=30, metadata=routing_metadata(request.target))
        return json.loads(response.payload)

    async def retries(self) -> float:
        """Requests sent again to another replica, as the gateway's /metrics count them (on
        the native plane the proxy's retries, mapped to the same name)."""
        scraped = await scrape(f"http://127.0.0.1:{self.gateway.http_port}/metrics")
        return sum(scraped.matching("slipway_inference_retries_total").values())

    async def autoscale(self, deployment_id: str, **settings) -> None:
        deployment = r.Deployment(id=deployment_id)
        for key, value in settings.items():
            setattr(deployment.autoscaling_settings, key, value)
        paths = [f"autoscaling_settings.{k}" for k in settings]
        await self.api.deployments.UpdateDeployment(
            ds.UpdateDeploymentRequest(deployment=deployment, update_mask=field_mask_pb2.FieldMask(paths=paths))
        )


@pytest.fixture
async def platform(tmp_path, data_plane):
    controller = await Controller.start(
        controller_settings(tmp_path / "data", autoscaler=AutoscalerConfig(time_scale=0.01))
    )
    gateway = await Gateway.start(
        GatewaySettings(
            controller_address=controller.address,
            internal_token=controller.internal_token,
            grpc_port=0,
            http_port=0,
            replica_wait_seconds=20,
            load_report_seconds=0.05,
            max_queued_per_deployment=2,
            require_api_keys=False,
            data_plane=data_plane,
        )
    )
    if data_plane == "native":
        await wait_native_proxy(os.getpid())
    async with (
        grpc.aio.insecure_channel(controller.address) as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as gw,
    ):
        api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
        yield Platform(api, gateway, inf_grpc.InferenceServiceStub(gw), tmp_path)
    await gateway.stop()
    await controller.stop()


async def load(platform: Platform, stop: asyncio.Event, workers: int, results: list, failures: list, **target):
    async def worker():
        while not stop.is_set():
            try:
                results.append(await platform.call(**target))
            except grpc.aio.AioRpcError as error:
                failures.append(error)

    await asyncio.gather(*(worker() for _ in range(workers)))


async def test_load_scales_up_to_the_computed_count_then_down_in_halving_steps_to_zero(platform: Platform):
    pushed = await platform.api.push(platform.package("m", seconds=0.1), target=ds.PUSH_TARGET_PUBLISHED)
    did = pushed.deployment.id
    await platform.autoscale(
        did,
        max_replica=8,
        concurrency_target=1,
        target_utilization_percentage=100,
        autoscaling_window=10,
        scale_down_delay=100,
    )
    desired_seen = []
    watch = platform.api.deployments.WatchDeployments(ds.WatchDeploymentsRequest(deployment_id=did))

    async def record():
        async for message in watch:
            desired_seen.append(message.deployment.desired_replicas)

    recorder = asyncio.create_task(record())
    await platform.api.wait_state(did, r.DEPLOYMENT_STATE_ACTIVE)
    await wait_until(lambda did=did: platform.gateway.follower.index.deployments[did].endpoints, what="routable")
    stop, results, failures = asyncio.Event(), [], []
    traffic = asyncio.create_task(load(platform, stop, 3, results, failures, deployment_id=did))

    async def replicas_ready(n):
        d = await platform.api.get(did)
        return d.ready_replicas == n and d.desired_replicas == n

    await wait_until(lambda: replicas_ready(3), what="3 ready replicas for 3 concurrent callers")
    stop.set()
    await traffic
    await platform.api.wait_state(did, r.DEPLOYMENT_STATE_SCALED_TO_ZERO, timeout=30)
    # The watch delivers the last change after the store has it (a race seen under load).
    await wait_until(lambda: desired_seen and desired_seen[-1] == 0, what="the watch to see zero")
    watch.cancel()
    recorder.cancel()
    assert failures == []
    assert max(desired_seen) == 3
    after_peak = desired_seen[desired_seen.index(3) :]
    steps = [v for i, v in enumerate(after_peak) if i == 0 or v != after_peak[i - 1]]
    assert steps == [3, 1, 0], steps  # 3 -> 3-ceil(3/2)=1 -> 0: halving, not all at once


async def test_max_replica_caps_and_development_never_exceeds_one(platform: Platform):
    published = await platform.api.push(platform.package("m", seconds=0.1), target=ds.PUSH_TARGET_PUBLISHED)
    dev = await platform.api.push(platform.package("m", seconds=0.1))
    await platform.autoscale(published.deployment.id, max_replica=2, autoscaling_window=10)
    for pushed in (published, dev):
        did = pushed.deployment.id
        await platform.api.wait_state(did, r.DEPLOYMENT_STATE_ACTIVE)
        await wait_until(lambda did=did: platform.gateway.follower.index.deployments[did].endpoints, what="routable")
    stop, results, failures = asyncio.Event(), [], []
    traffic = [
        asyncio.create_task(load(platform, stop, 4, results, failures, deployment_id=published.deployment.id)),
        asyncio.create_task(
            load(platform, stop, 4, results, failures, model_id="m", environment=inf.ENVIRONMENT_DEVELOPMENT)
        ),
    ]

    async def capped():
        p = await platform.api.get(published.deployment.id)
        d = await platform.api.get(dev.deployment.id)
        assert p.desired_replicas <= 2 and d.desired_replicas <= 1 and len(d.replicas) <= 1
        return p.ready_replicas == 2 and len(results) > 100

    await wait_until(capped, what="published at its max under load")
    stop.set()
    await asyncio.gather(*traffic)
    assert failures == []


async def test_a_request_wakes_a_scaled_to_zero_deployment_and_a_full_queue_gets_429(platform: Platform):
    pushed = await platform.api.push(platform.package("m"), target=ds.PUSH_TARGET_PRODUCTION)
    did = pushed.deployment.id
    await platform.api.wait_production(pushed.model.id, did)
    await platform.autoscale(did, autoscaling_window=10, scale_down_delay=50)
    await platform.api.wait_state(did, r.DEPLOYMENT_STATE_SCALED_TO_ZERO, timeout=30)

    states = []
    watch = platform.api.deployments.WatchDeployments(ds.WatchDeploymentsRequest(deployment_id=did))

    async def record():
        async for message in watch:
            states.append(message.deployment.state)

    recorder = asyncio.create_task(record())
    platform.gate.unlink()  # the model's load() now waits: requests queue in the gateway
    waiting = [asyncio.create_task(platform.call(model_id="m")) for _ in range(2)]
    await wait_until(lambda: platform.gateway.forwarder.loads[did].queued == 2, what="two queued requests")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.call(model_id="m")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with _http(platform) as post:
        status, body = await post(f"/model/{pushed.model.id}/production/predict")
        assert status == 429 and body["error"]["reason"] == "WAKE_QUEUE_FULL"

    platform.gate.touch()
    answers = await asyncio.gather(*waiting)
    assert all(a["tag"] == "v1" for a in answers)
    watch.cancel()
    recorder.cancel()
    woke = [s for s in states if s != r.DEPLOYMENT_STATE_SCALED_TO_ZERO]
    assert woke[:3] == [r.DEPLOYMENT_STATE_WAKING_UP, r.DEPLOYMENT_STATE_LOADING_MODEL, r.DEPLOYMENT_STATE_ACTIVE], [
        r.DeploymentState.Name(s) for s in states
    ]


def _http(platform: Platform):
    import contextlib

    import aiohttp

    @contextlib.asynccontextmanager
    async def session():
        async with aiohttp.ClientSession() as client:

            async def post(path):
                async with client.post(f"http://127.0.0.1:{platform.gateway.http_port}{path}", json={}) as response:
                    return response.status, await response.json()

            yield post

    return session()


async def test_faults_and_changes_under_steady_load_fail_no_request(platform: Platform):
    prod = await platform.api.push(platform.package("m", tag="one"), target=ds.PUSH_TARGET_PRODUCTION)
    await platform.api.wait_production(prod.model.id, prod.deployment.id)
    sleepy = await platform.api.push(platform.package("sleepy"), target=ds.PUSH_TARGET_PRODUCTION)
    await platform.api.wait_production(sleepy.model.id, sleepy.deployment.id)
    await platform.autoscale(sleepy.deployment.id, autoscaling_window=10, scale_down_delay=30)
    dev = await platform.api.push(platform.package("m", tag="two"))
    await platform.api.wait_state(dev.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)

    stop, results, failures = asyncio.Event(), [], []
    traffic = asyncio.create_task(load(platform, stop, 3, results, failures, model_id="m"))
    await wait_until(lambda: len(results) > 10, what="traffic")

    # 1. promotion
    promoted = await platform.api.deployments.PromoteDeployment(
        ds.PromoteDeploymentRequest(deployment_id=dev.deployment.id)
    )
    new_id = promoted.deployment.id
    await platform.api.wait_production(prod.model.id, new_id)
    await wait_until(lambda: results[-1]["tag"] == "two", what="traffic on the new production")
    # 2. scale up, 3. kill a replica, 4. scale down
    await platform.autoscale(new_id, min_replica=3, max_replica=3, autoscaling_window=10, scale_down_delay=20)
    deployment = await wait_until(lambda: _ready(platform, new_id, 3), what="3 replicas")
    os.kill(deployment.replicas[0].pid, signal.SIGKILL)
    await wait_until(lambda: _ready(platform, new_id, 3, avoid=deployment.replicas[0].pid), what="replacement")
    await platform.autoscale(new_id, min_replica=1, max_replica=1)  # the load alone would keep 3
    await wait_until(lambda: _ready(platform, new_id, 1), what="scale down to 1")
    # 5. a deployment that scaled to zero comes back for a request
    await platform.api.wait_state(sleepy.deployment.id, r.DEPLOYMENT_STATE_SCALED_TO_ZERO, timeout=30)
    assert (await platform.call(model_id="sleepy"))["tag"] == "v1"
    count = len(results)
    await wait_until(lambda: len(results) > count + 10, what="more traffic")
    stop.set()
    await traffic
    assert failures == [], failures[:3]
    assert len(results) > 40  # a steady stream throughout, not a handful of calls


async def _ready(platform: Platform, deployment_id: str, count: int, avoid: int = 0):
    d = await platform.api.get(deployment_id)
    ready = [rep for rep in d.replicas if rep.state == r.REPLICA_STATE_READY]
    if len(ready) == count == len(d.replicas) and all(rep.pid != avoid for rep in ready):
        return d
    return None


async def test_a_controller_restart_leaves_a_scaled_to_zero_deployment_asleep(tmp_path):
    settings = controller_settings(tmp_path / "data", autoscaler=AutoscalerConfig(time_scale=0.01, wake_hold_seconds=0))
    controller = await Controller.start(settings)
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            pushed = await api.push(api.package("sleepy"), target=ds.PUSH_TARGET_PRODUCTION)
            await api.wait_production(pushed.model.id, pushed.deployment.id)
            await Platform(api, None, None, tmp_path).autoscale(pushed.deployment.id, scale_down_delay=0)
            await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_SCALED_TO_ZERO)
            # Asleep with a delay again: a restart that woke it would keep it up for that long.
            await Platform(api, None, None, tmp_path).autoscale(pushed.deployment.id, scale_down_delay=900)
        await controller.stop()

        controller = await Controller.start(settings)
        for _ in range(3):  # passes of its own, with no load reported
            await controller.reconciler.reconcile_once()
        assert not controller.reconciler.replicas_of(pushed.deployment.id), "woken by the restart"
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            assert (await api.get(pushed.deployment.id)).state == r.DEPLOYMENT_STATE_SCALED_TO_ZERO
    finally:
        await controller.stop()


async def test_wake_starts_a_deployment_ahead_of_traffic_and_a_wait_that_runs_out_is_503(platform: Platform):
    sleepers = []
    for _ in range(2):
        pushed = await platform.api.push(platform.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
        await platform.autoscale(pushed.deployment.id, autoscaling_window=10, scale_down_delay=0)
        sleepers.append(pushed.deployment.id)
    for did in sleepers:
        await platform.api.wait_state(did, r.DEPLOYMENT_STATE_SCALED_TO_ZERO, timeout=30)

    async with _http(platform) as post:  # woken with no request sent: by the HTTP route, and by the RPC
        status, body = await post(f"/model/{pushed.model.id}/deployment/{sleepers[0]}/wake")
        assert status == 202, body
    await platform.api.deployments.WakeDeployment(ds.WakeDeploymentRequest(deployment_id=sleepers[1]))
    for did in sleepers:
        await platform.api.wait_state(did, r.DEPLOYMENT_STATE_ACTIVE)

    await platform.api.deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=sleepers[0]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.api.deployments.WakeDeployment(ds.WakeDeploymentRequest(deployment_id=sleepers[0]))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # A model that cannot load in time: the wait for a ready replica runs out.
    platform.gate.unlink()
    stuck = await platform.api.push(platform.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    impatient = await Gateway.start(
        GatewaySettings(
            controller_address=platform.gateway.settings.controller_address,
            internal_token=platform.gateway.settings.internal_token,
            grpc_port=0,
            http_port=0,
            replica_wait_seconds=0.5,
            require_api_keys=False,
            data_plane=platform.gateway.settings.data_plane,
        )
    )
    try:
        await wait_until(lambda: stuck.deployment.id in impatient.follower.index.deployments, what="the route")
        import aiohttp

        async with aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{impatient.http_port}/model/{stuck.model.id}/deployment/{stuck.deployment.id}/predict"
            async with client.post(url, json={}) as response:
                assert response.status == 503, await response.text()
                assert (await response.json())["error"]["reason"] == "NO_READY_REPLICA"
    finally:
        platform.gate.touch()
        await impatient.stop()


async def test_a_replica_is_out_of_every_gateway_before_it_drains(platform: Platform):
    """Scale-down under load: no request reaches the replica being removed, so none is
    refused by it and retried elsewhere (the retry is a safety net, not the mechanism)."""
    pushed = await platform.api.push(platform.package("m", seconds=0.01), target=ds.PUSH_TARGET_PRODUCTION)
    did = pushed.deployment.id
    await platform.api.wait_production(pushed.model.id, did)
    await platform.autoscale(did, min_replica=3, max_replica=3)
    await wait_until(lambda: _ready(platform, did, 3), what="3 replicas")

    stop, results, failures = asyncio.Event(), [], []
    traffic = asyncio.create_task(load(platform, stop, 6, results, failures, model_id="m"))
    await wait_until(lambda: len(results) > 20, what="traffic")
    retries = await platform.retries()
    await platform.autoscale(did, min_replica=1, max_replica=1)
    await wait_until(lambda: _ready(platform, did, 1), what="scale down to 1")
    count = len(results)
    await wait_until(lambda: len(results) > count + 20, what="more traffic")
    stop.set()
    await traffic
    assert failures == [], failures[:3]
    assert await platform.retries() == retries, "a request reached a replica that was draining"
