"""The gateway through real processes: controller, gateway, replicas; gRPC and HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
import grpc
import pytest
from conftest import Api, error_reason, routing_metadata, wait_native_proxy, wait_until

from slipway.limits import DEFAULT_MAX_REQUEST_BYTES
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import resources_pb2 as r

# Every test that starts a controller runs on SQLite and on PostgreSQL, and every test that
# starts a gateway on the native data plane too (tests/conftest.py).
pytestmark = [pytest.mark.both_backends, pytest.mark.both_data_planes]

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE

STREAMING_MODEL = """
import pathlib, time

class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        gate = pathlib.Path({gate!r})
        yield "first;"
        while not gate.exists():
            time.sleep(0.01)
        yield "second;"
        yield "third"
"""


async def succeeds(call):
    """The call's answer, or None while the gateway cannot serve it yet."""
    try:
        return await call()
    except grpc.aio.AioRpcError:
        return None


class Client:
    """gRPC and HTTP calls to one gateway."""

    def __init__(self, gateway, session: aiohttp.ClientSession, channel: grpc.aio.Channel) -> None:
        self.http = f"http://127.0.0.1:{gateway.http_port}"
        self.session = session
        self.stub = inf_grpc.InferenceServiceStub(channel)

    async def grpc_predict(self, payload: bytes = b'"hi"', **target) -> inf.PredictResponse:
        # With the routing metadata the SDK sends, so that the native plane routes the call itself.
        request = inf.PredictRequest(target=inf.Target(**target), payload=payload)
        return await self.stub.Predict(request, timeout=20, metadata=routing_metadata(request.target))

    async def post(self, path: str, body: bytes = b'"hi"') -> tuple[int, object]:
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.http + path, data=body, headers=headers) as response:
            text = await response.read()
            return response.status, json.loads(text)


@pytest.fixture
async def client(gateway):
    async with (
        aiohttp.ClientSession() as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel,
    ):
        yield Client(gateway, session, channel)


async def test_model_id_reaches_production_and_follows_a_promotion(api: Api, gateway, client: Client):
    first = await api.push(api.package("m", tag="one"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(first.model.id, first.deployment.id)

    async def answers(tag: str):
        status, body = await client.post(f"/model/{first.model.id}/production/predict", b'{"q": 1}')
        return status == 200 and body == {"tag": tag, "input": {"q": 1}}

    await wait_until(lambda: answers("one"), what="production to answer over HTTP")
    response = await client.grpc_predict(b'{"q": 2}', model_id=first.model.id)
    assert json.loads(response.payload) == {"tag": "one", "input": {"q": 2}}
    assert response.deployment_id == first.deployment.id
    by_name = await client.grpc_predict(model_id="m")
    assert by_name.deployment_id == first.deployment.id

    second = await api.push(api.package("m", tag="two"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(first.model.id, second.deployment.id)
    await wait_until(lambda: answers("two"), timeout=5, what="the promotion to reach the gateway")
    assert (await client.grpc_predict(model_id=first.model.id)).deployment_id == second.deployment.id


async def test_deployment_id_and_development_alias(api: Api, gateway, client: Client):
    dev = await api.push(api.package("m", tag="dev"))
    published = await api.push(api.package("m", tag="pub"), target=ds.PUSH_TARGET_PUBLISHED)
    await api.wait_state(dev.deployment.id, ACTIVE)
    await api.wait_state(published.deployment.id, ACTIVE)
    model_id = dev.model.id

    async def routed():
        status, body = await client.post(f"/model/{model_id}/deployment/{published.deployment.id}/predict")
        return status == 200 and body["tag"] == "pub"

    await wait_until(routed, what="the published deployment to be routable")
    status, body = await client.post(f"/model/{model_id}/development/predict")
    assert (status, body["tag"]) == (200, "dev")
    via_grpc = await client.grpc_predict(model_id=model_id, environment=inf.ENVIRONMENT_DEVELOPMENT)
    assert via_grpc.deployment_id == dev.deployment.id
    by_id = await client.grpc_predict(deployment_id=published.deployment.id)
    assert json.loads(by_id.payload)["tag"] == "pub"
    # The development deployment is not production: the model-ID route has no target.
    status, body = await client.post(f"/model/{model_id}/production/predict")
    assert status == 404 and body["error"]["reason"] == "NO_PRODUCTION_DEPLOYMENT"


async def test_unknown_deleted_and_deactivated_targets_are_distinct_404s(api: Api, gateway, client: Client):
    kept = await api.push(api.package("m"), target=ds.PUSH_TARGET_PRODUCTION)
    doomed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    await api.wait_production(kept.model.id, kept.deployment.id)
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=doomed.deployment.id))
    await api.deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=kept.deployment.id))
    gone = await api.push(api.package("gone"))
    await api.models.DeleteModel(ms.DeleteModelRequest(model_id=gone.model.id))
    model_id = kept.model.id

    expectations = {
        f"/model/{model_id}/deployment/{doomed.deployment.id}/predict": ("DEPLOYMENT_DELETED", "was deleted"),
        f"/model/{model_id}/deployment/d_nothing/predict": ("DEPLOYMENT_NOT_FOUND", "no deployment"),
        f"/model/{model_id}/production/predict": ("DEPLOYMENT_INACTIVE", "is deactivated"),
        f"/model/{model_id}/deployment/{kept.deployment.id}/predict": ("DEPLOYMENT_INACTIVE", "is deactivated"),
        "/model/m_nothing/production/predict": ("MODEL_NOT_FOUND", "no model"),
        f"/model/{gone.model.id}/development/predict": ("MODEL_DELETED", "was deleted"),
    }

    async def all_settled():
        for path, (reason, _) in expectations.items():
            status, body = await client.post(path)
            if status != 404 or body["error"]["reason"] != reason:
                return False
        return True

    await wait_until(all_settled, timeout=10, what="the route table to reflect the changes")
    for path, (_reason, words) in expectations.items():
        status, body = await client.post(path)
        assert status == 404 and words in body["error"]["message"], (path, body)

    for target, reason in [
        ({"deployment_id": doomed.deployment.id}, "DEPLOYMENT_DELETED"),
        ({"deployment_id": "d_nothing"}, "DEPLOYMENT_NOT_FOUND"),
        ({"model_id": model_id}, "DEPLOYMENT_INACTIVE"),
        ({"model_id": gone.model.id}, "MODEL_DELETED"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.grpc_predict(**target)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(caught.value) == reason


async def test_malformed_http_body_is_a_400_unknown_paths_404_wrong_method_405_too_large_413(
    api: Api, gateway, client: Client
):
    dev = await api.push(api.package("m"))
    await api.wait_state(dev.deployment.id, ACTIVE)

    async def routed():
        return (await client.post(f"/model/{dev.model.id}/development/predict"))[0] == 200

    await wait_until(routed, what="development to be routable")
    status, body = await client.post(f"/model/{dev.model.id}/development/predict", b"{not json")
    assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT" and "JSON" in body["error"]["message"]
    status, body = await client.post("/nowhere")
    assert status == 404 and body["error"]["reason"] == "NO_SUCH_ROUTE"
    async with client.session.get(f"{client.http}/model/{dev.model.id}/development/predict") as response:
        assert response.status == 405 and response.headers["Allow"] == "POST"
        assert (await response.json())["error"]["reason"] == "METHOD_NOT_ALLOWED"
    status, body = await client.post(
        f"/model/{dev.model.id}/development/predict", b" " * (DEFAULT_MAX_REQUEST_BYTES + 1)
    )
    assert status == 413 and body["error"]["reason"] == "REQUEST_TOO_LARGE"


async def test_streaming_model_streams_over_grpc_and_http(api: Api, gateway, client: Client, tmp_path):
    gate = tmp_path / "gate"
    dev = await api.push(api.package("s", source=STREAMING_MODEL.format(gate=str(gate))))
    await api.wait_state(dev.deployment.id, ACTIVE)
    await wait_until(
        lambda: (
            dev.deployment.id in gateway.follower.index.deployments
            and gateway.follower.index.deployments[dev.deployment.id].endpoints
        ),
        what="routes",
    )

    target = inf.Target(deployment_id=dev.deployment.id)
    stream = client.stub.PredictStream(
        inf.PredictStreamRequest(target=target, payload=b"{}"), timeout=20, metadata=routing_metadata(target)
    )
    messages = stream.__aiter__()
    first = await anext(messages)
    assert first.chunk == b"first;"  # arrived while the model is still blocked on the gate
    gate.touch()
    rest = [m.chunk async for m in messages]
    assert b"".join(rest) == b"second;third"

    gate.unlink()
    async with client.session.post(f"{client.http}/model/s/development/predict", json={}) as response:
        assert response.status == 200
        assert await response.content.readany() == b"first;"
        gate.touch()
        assert await response.content.read() == b"second;third"


async def test_a_promotion_under_steady_load_fails_no_request(api: Api, gateway, client: Client):
    first = await api.push(api.package("m", tag="one"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(first.model.id, first.deployment.id)
    await wait_until(lambda: succeeds(lambda: client.grpc_predict(model_id=first.model.id)), what="production routable")
    dev = await api.push(api.package("m", tag="two"))
    await api.wait_state(dev.deployment.id, ACTIVE)

    failures, answers, stop = [], [], asyncio.Event()

    async def caller():
        while not stop.is_set() and len(answers) < 20_000:
            try:
                response = await client.grpc_predict(model_id=first.model.id)
                answers.append(json.loads(response.payload)["tag"])
            except grpc.aio.AioRpcError as error:
                failures.append(error)

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    await wait_until(lambda: len(answers) > 20, what="load to start")
    promoted = await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=dev.deployment.id))
    await api.wait_production(first.model.id, promoted.deployment.id)
    await wait_until(lambda: answers[-1] == "two", timeout=10, what="traffic to reach the new production")
    count = len(answers)
    await wait_until(lambda: len(answers) > count + 20, what="more answers after the switch")
    stop.set()
    await asyncio.gather(*callers)
    assert failures == []
    assert answers[0] == "one" and answers[-1] == "two"


async def test_gateway_keeps_serving_while_the_controller_is_down_and_resyncs(tmp_path, database, data_plane):
    from test_restart import ControllerProcess, free_port, replica_pids

    from gateway.server import Gateway, GatewaySettings

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    controller = ControllerProcess(data_dir, port, database)
    gateway = None
    try:
        await controller.ready()
        gateway = await Gateway.start(
            GatewaySettings(
                controller_address=controller.address,
                internal_token_file=data_dir / "internal.token",
                grpc_port=0,
                http_port=0,
                replica_wait_seconds=5,
                require_api_keys=False,
                data_plane=data_plane,
            )
        )
        if data_plane == "native":
            await wait_native_proxy(os.getpid())
        async with (
            grpc.aio.insecure_channel(controller.address) as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as gw_channel,
        ):
            from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
            from slipway.v1 import model_service_pb2_grpc as ms_grpc

            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            stub = inf_grpc.InferenceServiceStub(gw_channel)
            pushed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PRODUCTION)
            await api.wait_production(pushed.model.id, pushed.deployment.id)

            def call():
                target = inf.Target(model_id="m")
                request = inf.PredictRequest(target=target, payload=b"1")
                return stub.Predict(request, timeout=10, metadata=routing_metadata(target))

            await wait_until(lambda: succeeds(call), what="production routable")

            controller.process.send_signal(signal.SIGKILL)
            controller.process.wait(10)
            await wait_until(lambda: not gateway.follower.connected, what="the gateway to notice")
            for _ in range(20):
                assert json.loads((await call()).payload)["input"] == 1

            controller = ControllerProcess(data_dir, port, database)
            await controller.ready()
            await wait_until(lambda: gateway.follower.connected, what="the gateway to reconnect")
            late = await api.push(api.package("late"), target=ds.PUSH_TARGET_PRODUCTION)
            await api.wait_production(late.model.id, late.deployment.id)

            def late_call():
                target = inf.Target(model_id="late")
                request = inf.PredictRequest(target=target, payload=b"2")
                return stub.Predict(request, timeout=10, metadata=routing_metadata(target))

            answered = await wait_until(lambda: succeeds(late_call), what="routes after resync")
            assert json.loads(answered.payload)["input"] == 2
    finally:
        if gateway is not None:
            await gateway.stop()
        controller.process.kill()
        for pid in replica_pids(data_dir, include_fork_servers=True):
            os.kill(pid, signal.SIGKILL)
