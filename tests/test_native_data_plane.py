"""The native data plane (gateway/native/) through real processes: controller, gateway with
HAProxy on its public ports, replicas."""

from __future__ import annotations

import json
import ssl

import aiohttp
import grpc
import pytest
from conftest import Api, controller_settings, start_gateway, stop_or_explain, wait_until
from google.protobuf import field_mask_pb2
from pki import generate

from controller.autoscaler import AutoscalerConfig
from controller.server import Controller
from gateway.native.proxy import find_haproxy
from slipway import data_plane
from slipway.tls import ServerTls
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

pytestmark = pytest.mark.skipif(find_haproxy() is None, reason="haproxy is not installed (make haproxy-bin)")


@pytest.fixture
async def native(controller):
    running = await start_gateway(controller, data_plane="native")
    yield running
    await stop_or_explain(running.stop(), "gateway")


async def post(port: int, path: str, body: bytes = b'"hi"', headers: dict | None = None):
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": "application/json", **(headers or {})}
        ) as response,
    ):
        return response.status, json.loads(await response.read()), response.headers


def predict(port: int, metadata: tuple = (), **target):
    async def call():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await inf_grpc.InferenceServiceStub(channel).Predict(
                inf.PredictRequest(target=inf.Target(**target), payload=b'"hi"'), timeout=10, metadata=metadata
            )

    return call()


async def test_haproxy_holds_the_public_ports_and_python_answers_the_rest(api: Api, native):
    assert native.native is not None and native.native.process.poll() is None
    pushed = await api.push(api.package("m", tag="one"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(pushed.model.id, pushed.deployment.id)

    async def answers():
        status, body, headers = await post(native.http_port, f"/model/{pushed.model.id}/production/predict")
        return status == 200 and body["tag"] == "one" and headers["X-Slipway-Request-Id"]

    await wait_until(answers, what="production to answer through haproxy")
    status, body, headers = await post(
        native.http_port, "/model/nope/production/predict", headers={"X-Request-Id": "r-1"}
    )
    assert status == 404 and body["error"]["reason"] == "MODEL_NOT_FOUND"
    assert headers["X-Slipway-Request-Id"] == "r-1"
    # A gRPC call without routing metadata is the Python gateway's.
    response = await predict(native.grpc_port, model_id="m")
    assert response.deployment_id == pushed.deployment.id


async def test_a_routed_grpc_call_goes_straight_to_the_replica(api: Api, native):
    pushed = await api.push(api.package("m", tag="one"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(pushed.model.id, pushed.deployment.id)
    await wait_until(lambda: native.native.slots.owner.get(pushed.deployment.id) is not None, what="a slot")
    before = native.forwarder.loads[pushed.deployment.id].requests_total
    routed = ((data_plane.MODEL_HEADER, "m"), (data_plane.ENVIRONMENT_HEADER, "production"))
    answer = await predict(native.grpc_port, routed, model_id="m")
    assert answer.deployment_id == pushed.deployment.id  # the replica answering InferenceService itself
    assert native.forwarder.loads[pushed.deployment.id].requests_total == before
    await wait_until(
        lambda: native.forwarder.loads[pushed.deployment.id].native_requests >= 1, what="haproxy's count in the load"
    )


async def test_haproxy_serves_tls_with_alpn_h2_on_both_ports(tmp_path, controller):
    pki = generate(tmp_path)
    gateway = await start_gateway(controller, data_plane="native", tls=ServerTls.load(pki.cert, pki.key))
    try:
        context = ssl.create_default_context(cafile=str(pki.ca))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"https://127.0.0.1:{gateway.http_port}/model/nope/production/predict", data=b"{}", ssl=context
            ) as response,
        ):
            assert response.status == 404 and (await response.json())["error"]["reason"] == "MODEL_NOT_FOUND"
        credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{gateway.grpc_port}", credentials) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await inf_grpc.InferenceServiceStub(channel).Predict(
                    inf.PredictRequest(target=inf.Target(model_id="nope"), payload=b"{}"), timeout=10
                )
            assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    finally:
        await stop_or_explain(gateway.stop(), "gateway")
    assert gateway.native.process.poll() is not None  # stopped with the gateway


async def test_a_deployment_scaled_to_zero_wakes_through_python_then_takes_the_fast_path(tmp_path):
    settings = controller_settings(tmp_path / "data", autoscaler=AutoscalerConfig(time_scale=0.01))
    controller = await Controller.start(settings)
    gateway = await start_gateway(controller, data_plane="native")
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            pushed = await api.push(api.package("sleepy"), target=ds.PUSH_TARGET_PUBLISHED)
            update = r.Deployment(id=pushed.deployment.id)
            update.autoscaling_settings.scale_down_delay = 0
            update.autoscaling_settings.autoscaling_window = 10
            paths = ["autoscaling_settings.scale_down_delay", "autoscaling_settings.autoscaling_window"]
            await api.deployments.UpdateDeployment(
                ds.UpdateDeploymentRequest(deployment=update, update_mask=field_mask_pb2.FieldMask(paths=paths))
            )
            await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_SCALED_TO_ZERO, timeout=60)
        load = gateway.forwarder.loads[pushed.deployment.id]
        python_before, native_before = load.requests_total, load.native_requests
        routed = ((data_plane.DEPLOYMENT_HEADER, pushed.deployment.id),)
        woken = await predict(gateway.grpc_port, routed, deployment_id=pushed.deployment.id)
        assert woken.deployment_id == pushed.deployment.id  # Python (the activator) woke it and forwarded
        assert load.requests_total == python_before + 1
        await wait_until(
            lambda: gateway.native.slots.owner.get(pushed.deployment.id) is not None, what="the woken deployment's slot"
        )
        try:
            await predict(gateway.grpc_port, routed, deployment_id=pushed.deployment.id)
        except grpc.aio.AioRpcError as error:  # a replica without InferenceService (before replica-direct)
            assert error.code() is grpc.StatusCode.UNIMPLEMENTED, error
        assert load.requests_total == python_before + 1  # not through Python
        await wait_until(lambda: load.native_requests > native_before, what="haproxy's request in the load")
    finally:
        await stop_or_explain(gateway.stop(), "gateway")
        await stop_or_explain(controller.stop(), "controller")
