"""A named environment's stable endpoint through real processes (controller, gateway, replicas):
HTTP `/model/{id}/environments/{name}/...` for predict, wake and the streaming and Truss verbs,
gRPC Target.environment_name, the misses each say which, and the metrics' environment label."""

from __future__ import annotations

import json

import aiohttp
import grpc
import pytest
from conftest import Api, error_reason, routing_metadata, wait_until
from metrics_scrape import scrape
from test_environments import create, promote
from test_gateway import STREAMING_MODEL

from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import environment_service_pb2 as es
from slipway.v1 import environment_service_pb2_grpc as es_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import resources_pb2 as r

# Every test that starts a gateway runs on both data planes (tests/conftest.py).
pytestmark = pytest.mark.both_data_planes

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
JSON = {"Content-Type": "application/json"}


async def test_an_environment_is_reachable_by_name_over_http_and_grpc(api: Api, gateway, tmp_path):
    envs = es_grpc.EnvironmentServiceStub(api.channel)
    dev = await api.push(api.package("m", tag="dev"))
    model_id = dev.model.id
    await create(envs, "m", "staging")
    await create(envs, "m", "qa")
    staged = await api.push(api.package("m", tag="staged"), target=ds.PUSH_TARGET_PUBLISHED)
    await api.wait_state(staged.deployment.id, ACTIVE)
    assert (await promote(api, staged.deployment.id, "staging")).completed
    gate = tmp_path / "gate"
    streaming = await api.push(
        api.package("m", source=STREAMING_MODEL.format(gate=str(gate))), target=ds.PUSH_TARGET_PUBLISHED
    )
    await api.wait_state(streaming.deployment.id, ACTIVE)
    gate.touch()
    base = f"http://127.0.0.1:{gateway.http_port}"

    async with (
        aiohttp.ClientSession() as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel,
    ):

        async def post(path: str, body: bytes = b'"hi"') -> tuple[int, dict | list | str]:
            async with session.post(base + path, data=body, headers=JSON) as response:
                return response.status, json.loads(await response.read())

        async def answers() -> bool:
            status, body = await post(f"/model/{model_id}/environments/staging/predict", b'{"q": 1}')
            return status == 200 and body == {"tag": "staged", "input": {"q": 1}}

        await wait_until(answers, what="staging to answer over HTTP")
        status, body = await post("/model/m/environments/staging/predict")  # by the model's name too
        assert (status, body["tag"]) == (200, "staged")
        status, body = await post(f"/model/{model_id}/environments/staging/wake")
        assert status == 202, body
        for path, reason in (
            (f"/model/{model_id}/environments/qa/predict", "NO_DEPLOYMENT_IN_ENVIRONMENT"),
            (f"/model/{model_id}/environments/nowhere/predict", "ENVIRONMENT_NOT_FOUND"),
            (f"/model/{model_id}/environments/production/predict", "NO_PRODUCTION_DEPLOYMENT"),
            (f"/model/{model_id}/environments/nowhere/wake", "ENVIRONMENT_NOT_FOUND"),
        ):
            status, body = await post(path)
            assert (status, body["error"]["reason"]) == (404, reason), path
        status, body = await post(f"/model/{model_id}/environments/development/predict")
        assert (status, body["tag"]) == (200, "dev")

        stub = inf_grpc.InferenceServiceStub(channel)
        target = inf.Target(model_id=model_id, environment_name="staging")
        answered = await stub.Predict(
            inf.PredictRequest(target=target, payload=b'"x"'), timeout=20, metadata=routing_metadata(target)
        )
        assert answered.deployment_id == staged.deployment.id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            nowhere = inf.Target(model_id=model_id, environment_name="nowhere")
            await stub.Predict(inf.PredictRequest(target=nowhere), timeout=20, metadata=routing_metadata(nowhere))
        assert (caught.value.code(), error_reason(caught.value)) == (grpc.StatusCode.NOT_FOUND, "ENVIRONMENT_NOT_FOUND")

        # A streaming model in an environment streams there, over HTTP and gRPC.
        assert (await promote(api, streaming.deployment.id, "qa")).completed

        async def streams() -> bool:
            async with session.post(
                f"{base}/model/{model_id}/environments/qa/predict", data=b'"hi"', headers=JSON
            ) as response:
                return response.status == 200 and await response.read() == b"first;second;third"

        await wait_until(streams, what="qa to stream over HTTP")
        qa = inf.Target(model_id="m", environment_name="qa")
        chunks = [
            c.chunk
            async for c in stub.PredictStream(
                inf.PredictStreamRequest(target=qa, payload=b'"x"'), timeout=20, metadata=routing_metadata(qa)
            )
        ]
        assert b"".join(chunks) == b"first;second;third"

        # The metrics label the environment the deployment serves.
        metrics = await scrape(f"{base}/metrics")
        labels = {"model_id": model_id, "deployment_id": staged.deployment.id, "environment": "staging"}
        assert (
            metrics.value("slipway_inference_requests_total", **labels, protocol="grpc", status_code="", grpc_code="OK")
            == 1
        )

        # Deleted, the environment's endpoint is gone; its deployment still answers by its ID.
        await envs.DeleteEnvironment(es.DeleteEnvironmentRequest(model_id=model_id, name="staging"))

        async def gone() -> bool:
            status, body = await post(f"/model/{model_id}/environments/staging/predict")
            return status == 404 and body["error"]["reason"] == "ENVIRONMENT_NOT_FOUND"

        await wait_until(gone, what="the deleted environment to leave the gateway's table")
        status, body = await post(f"/model/{model_id}/deployment/{staged.deployment.id}/predict")
        assert (status, body["tag"]) == (200, "staged")
