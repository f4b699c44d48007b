"""The controller's /metrics (its own and its replicas') after known changes and traffic:
replicas by phase, gRPC calls by method and code, a replica kill, cold starts, a deleted
deployment; and the metrics scope on both /metrics endpoints."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import grpc
import pytest
from conftest import Api, controller_settings, start_gateway, stop_or_explain, wait_until
from google.protobuf import field_mask_pb2
from metrics_scrape import Scrape, scrape

from controller.autoscaler import AutoscalerConfig
from controller.keys import KeySettings
from controller.server import Controller
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import key_service_pb2 as ks
from slipway.v1 import key_service_pb2_grpc as ks_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
SCALED_TO_ZERO = r.DEPLOYMENT_STATE_SCALED_TO_ZERO
DEPLOYMENT_SERVICE = "slipway.v1.DeploymentService"

PHASED_MODEL = """
class Model:
    def __init__(self, **kwargs):
        pass

    def preprocess(self, model_input):
        return model_input

    def predict(self, model_input):
        return {"input": model_input}

    def postprocess(self, output):
        return output
"""


GATED_MODEL = """
import pathlib, time

class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        while not pathlib.Path({loaded!r}).exists():
            time.sleep(0.01)

    def predict(self, model_input):
        while not pathlib.Path({answer!r}).exists():
            time.sleep(0.01)
        return model_input
"""


@pytest.fixture
async def platform(tmp_path):
    # Autoscaling durations at 1/100 (a 50 s scale-down delay is 0.5 s); a woken deployment is not held up.
    settings = controller_settings(tmp_path / "data", autoscaler=AutoscalerConfig(time_scale=0.01, wake_hold_seconds=0))
    controller = await Controller.start(settings)
    gateway = await start_gateway(controller)
    async with grpc.aio.insecure_channel(controller.address) as channel:
        api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
        yield controller, gateway, api
    await stop_or_explain(gateway.stop(), "gateway")
    await stop_or_explain(controller.stop(), "controller")


async def autoscale(api: Api, deployment_id: str, **settings) -> None:
    deployment = r.Deployment(id=deployment_id)
    for key, value in settings.items():
        setattr(deployment.autoscaling_settings, key, value)
    mask = field_mask_pb2.FieldMask(paths=[f"autoscaling_settings.{k}" for k in settings])
    await api.deployments.UpdateDeployment(ds.UpdateDeploymentRequest(deployment=deployment, update_mask=mask))


async def predict(gateway, deployment_id: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        request = inf.PredictRequest(target=inf.Target(deployment_id=deployment_id), payload=b'"hi"')
        await inf_grpc.InferenceServiceStub(channel).Predict(request, timeout=30)


async def test_replicas_calls_replica_phases_a_kill_and_a_deletion(platform):
    controller, gateway, api = platform
    pushed = await api.push(api.package("m", source=PHASED_MODEL), target=ds.PUSH_TARGET_PUBLISHED)
    deployment_id = pushed.deployment.id
    await autoscale(api, deployment_id, min_replica=1)
    await api.wait_state(deployment_id, ACTIVE)
    await wait_until(lambda: gateway.follower.index.deployments[deployment_id].endpoints, what="a routed replica")
    for _ in range(2):
        await predict(gateway, deployment_id)
    with pytest.raises(grpc.aio.AioRpcError):
        await api.get("d_nothing")
    url = f"{controller.http_url}/metrics"
    labels = {"model_id": pushed.model.id, "deployment_id": deployment_id, "environment": "published"}

    metrics = await scrape(url)
    assert metrics.value("slipway_deployment_replicas", **labels, phase="ready") == 1
    assert metrics.value("slipway_deployment_replicas", **labels, phase="starting") == 0
    assert metrics.value("slipway_deployment_desired_replicas", **labels) == 1
    assert metrics.value("slipway_autoscaler_panic", **labels) == 0
    handled = "slipway_grpc_server_handled_total"
    for method, code in (("CreateDeployment", "OK"), ("UpdateDeployment", "OK"), ("GetDeployment", "NOT_FOUND")):
        assert metrics.value(handled, grpc_service=DEPLOYMENT_SERVICE, grpc_method=method, grpc_code=code) == 1
    assert metrics.value(
        "slipway_grpc_server_handling_seconds_count", grpc_service=DEPLOYMENT_SERVICE, grpc_method="CreateDeployment"
    )
    assert metrics.value("slipway_reconcile_pass_seconds_count") > 0
    assert metrics.value("slipway_database_write_seconds_count") > 0
    # The replica's own metrics, asked for by the controller, with the deployment's and the replica's labels.
    (replica,) = controller.reconciler.replicas_of(deployment_id)
    on_replica = {**labels, "replica_id": replica.id}
    for phase in ("preprocess", "predict", "postprocess"):
        count = metrics.value("slipway_replica_predict_duration_seconds_count", **on_replica, phase=phase)
        assert count == 2, (phase, count)
    assert metrics.value("slipway_replica_in_flight", **on_replica) == 0
    assert metrics.value("slipway_replica_model_load_seconds", **on_replica) > 0

    # A replica killed while serving is restarted, and counted.
    assert metrics.value("slipway_replica_restarts_total", **labels) is None
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGKILL)

    async def restarted() -> Scrape | None:
        now = await scrape(url)
        ready = now.value("slipway_deployment_replicas", **labels, phase="ready") == 1
        return now if ready and now.value("slipway_replica_restarts_total", **labels) == 1 else None

    await wait_until(restarted, timeout=30, what="the killed replica to be counted and replaced")

    # A deleted deployment's series leave the controller's /metrics.
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=deployment_id))

    async def forgotten() -> bool:
        return not (await scrape(url)).mentions(deployment_id)

    await wait_until(forgotten, timeout=30, what="the deleted deployment's series to go")


async def test_cold_starts_from_a_wake_call_and_from_a_request(platform, tmp_path):
    controller, gateway, api = platform
    loaded, answer = tmp_path / "loaded", tmp_path / "answer"
    loaded.touch()
    answer.touch()
    source = GATED_MODEL.format(loaded=str(loaded), answer=str(answer))
    pushed = await api.push(api.package("m", source=source), target=ds.PUSH_TARGET_PUBLISHED)
    deployment_id = pushed.deployment.id
    await api.wait_state(deployment_id, ACTIVE)
    await autoscale(api, deployment_id, min_replica=0, autoscaling_window=10, scale_down_delay=50)
    await api.wait_state(deployment_id, SCALED_TO_ZERO)
    url = f"{controller.http_url}/metrics"
    labels = {"model_id": pushed.model.id, "deployment_id": deployment_id, "environment": "published"}
    cold = "slipway_cold_start_seconds_count"
    assert (await scrape(url)).value(cold, **labels) is None  # its first start was no cold start

    await api.deployments.WakeDeployment(ds.WakeDeploymentRequest(deployment_id=deployment_id))
    await api.wait_state(deployment_id, ACTIVE)
    await wait_until(lambda: _value(url, cold, labels, 1), what="the woken start to be counted")
    await api.wait_state(deployment_id, SCALED_TO_ZERO)

    # A request waits in the gateway's wake queue while the model loads, then in the model.
    loaded.unlink()
    answer.unlink()
    gateway_url = f"http://127.0.0.1:{gateway.http_port}/metrics"
    waiting = asyncio.create_task(predict(gateway, deployment_id))
    await wait_until(lambda: _value(gateway_url, "slipway_wake_queue_depth", labels, 1), what="a queued request")
    await wait_until(lambda: _value(url, "slipway_deployment_replicas", {**labels, "phase": "loading"}, 1))
    loaded.touch()
    await wait_until(lambda: _value(gateway_url, "slipway_inference_in_flight", labels, 1), what="one in flight")

    async def in_the_replica() -> dict | None:
        # The gateway counts the request before it reaches the replica: poll, not assert once.
        replica = (await scrape(url)).matching("slipway_replica_in_flight", **labels)
        return replica if list(replica.values()) == [1] else None

    await wait_until(in_the_replica, what="the request in flight in the replica")
    answer.touch()
    await waiting
    metrics = await wait_until(lambda: _value(url, cold, labels, 2), what="the request's cold start")
    seconds = metrics.value("slipway_cold_start_seconds_sum", **labels)
    assert seconds is not None and seconds > 0
    assert metrics.value("slipway_cold_start_seconds_bucket", **labels, le="+Inf") == 2
    gateway_metrics = await scrape(gateway_url)
    assert gateway_metrics.value("slipway_wake_wait_seconds_count", **labels) == 1
    assert gateway_metrics.value("slipway_wake_queue_depth", **labels) == 0
    assert gateway_metrics.value("slipway_inference_in_flight", **labels) == 0


async def _value(url: str, name: str, labels: dict, expected: float) -> Scrape | None:
    metrics = await scrape(url)
    return metrics if metrics.value(name, **labels) == expected else None


async def test_metrics_need_the_metrics_scope_on_the_controller_and_the_gateway(tmp_path):
    controller = await Controller.start(controller_settings(tmp_path / "data", keys=KeySettings()))
    gateway = await start_gateway(controller, require_api_keys=True)
    admin = (tmp_path / "data" / "admin.key").read_text().strip()
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            stub = ks_grpc.KeyServiceStub(channel)
            metadata = (("authorization", f"Api-Key {admin}"),)
            keys = {
                name: (await stub.CreateKey(ks.CreateKeyRequest(scope=scope), metadata=metadata)).secret_key
                for name, scope in (("metrics", ks.KEY_SCOPE_METRICS), ("inference", ks.KEY_SCOPE_INFERENCE))
            }
        await wait_until(lambda: len(gateway.follower.index.api_keys) == 3, what="the gateway to know the keys")
        endpoints = (f"{controller.http_url}/metrics", f"http://127.0.0.1:{gateway.http_port}/metrics")
        async with aiohttp.ClientSession() as session:
            for url in endpoints:
                async with session.get(url) as response:
                    assert response.status == 401, url
                    body = await response.json()
                    assert "API_KEY_MISSING" in str(body), body
                inference = {"Authorization": f"Api-Key {keys['inference']}"}
                async with session.get(url, headers=inference) as response:
                    assert response.status == 403, url
                    assert "API_KEY_SCOPE" in str(await response.json())
            for key in (keys["metrics"], admin):
                for url in endpoints:
                    assert (await scrape(url, f"Api-Key {key}")).samples
    finally:
        await stop_or_explain(gateway.stop(), "gateway")
        await stop_or_explain(controller.stop(), "controller")
