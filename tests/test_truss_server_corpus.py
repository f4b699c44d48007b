"""Truss's model-server semantics, package by package (tests/truss_corpus/): streaming,
predict_concurrency, the is_healthy and setup_environment hooks, OpenAI-compatible
methods and MessagePack bodies. Each package is pushed unmodified through the API and
called through a real gateway; the assertions are the answers Truss gives (see each
package's README). One controller and one gateway serve the whole module."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil

import aiohttp
import grpc
import msgpack
import pytest
import pytest_asyncio

from controller.server import Controller
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r
from tests.conftest import Api, controller_settings, error_reason, start_gateway, stop_or_explain, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

CORPUS = pathlib.Path(__file__).parent / "truss_corpus"
ACTIVE = r.DEPLOYMENT_STATE_ACTIVE


class Platform:
    def __init__(self, api: Api, gateway, session: aiohttp.ClientSession, channel: grpc.aio.Channel) -> None:
        self.api = api
        self.http = f"http://127.0.0.1:{gateway.http_port}"
        self.session = session
        self.inference = inf_grpc.InferenceServiceStub(channel)
        self._deployed: dict[str, ds.CreateDeploymentResponse] = {}

    def copy(self, name: str, extra_config: str = "") -> pathlib.Path:
        """The corpus package `name`, copied so that a test can add to its config.yaml."""
        target = self.api.tmp / name
        shutil.copytree(CORPUS / name, target)
        if extra_config:
            with (target / "config.yaml").open("a") as config:
                config.write(extra_config)
        return target

    async def deploy(self, name: str, extra_config: str = "") -> ds.CreateDeploymentResponse:
        """Push the package as development (once per module) and wait for it to serve."""
        if name not in self._deployed:
            pushed = await self.api.push(self.copy(name, extra_config) if extra_config else CORPUS / name)
            await self.api.wait_state(pushed.deployment.id, ACTIVE, timeout=60)
            self._deployed[name] = pushed
        return self._deployed[name]

    async def url(self, name: str, route: str = "predict") -> str:
        pushed = await self.deploy(name)
        return f"{self.http}/model/{pushed.model.id}/development/{route}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("truss_server")
    controller = await Controller.start(controller_settings(tmp / "data", health_check_seconds=0.2))
    gateway = await start_gateway(controller)
    async with (
        grpc.aio.insecure_channel(controller.address) as control,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as data,
        aiohttp.ClientSession() as session,
    ):
        api = Api(control, ds_grpc.DeploymentServiceStub(control), ms_grpc.ModelServiceStub(control), tmp)
        yield Platform(api, gateway, session, data)
    await stop_or_explain(gateway.stop(), "gateway")
    await stop_or_explain(controller.stop(), "controller")


async def post(platform: Platform, url: str, body: object, **headers: str) -> tuple[int, str, bytes]:
    async with platform.session.post(url, json=body, headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


# --- item 3: streaming -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "body", "expected"),
    [
        ("stream-sync-generator", {"words": ["a", "b", "c"]}, "a b c "),
        ("stream-async-generator", {"n": 3}, "token-0;token-1;token-2;"),
    ],
)
async def test_a_generator_streams_and_is_gathered_into_one_json_string(platform, package, body, expected):
    url = await platform.url(package)
    status, _, streamed = await post(platform, url, body)
    assert (status, streamed.decode()) == (200, expected)
    status, content_type, gathered = await post(platform, url, body, Accept="application/json")
    assert (status, content_type, json.loads(gathered)) == (200, "application/json", expected)


async def test_an_error_mid_stream_ends_the_stream_cleanly(platform):
    url = await platform.url("stream-error-mid-stream")
    async with platform.session.post(url, json={}) as response:
        # read() raises ClientPayloadError if the body was cut short rather than ended.
        assert (response.status, await response.read()) == (200, b"first chunk;")
    # The replica logged it, and the connection stays usable.
    status, _, gathered = await post(platform, url, {}, Accept="application/json")
    assert status == 500
    assert json.loads(gathered)["error"]["reason"] == "MODEL_ERROR"
    assert "the tokenizer broke mid-stream" in json.loads(gathered)["error"]["message"]


async def test_a_stream_that_stalls_longer_than_streaming_read_timeout_is_ended(platform):
    url = await platform.url("stream-read-timeout")
    received = b""
    async with platform.session.post(url, json={}) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in response.content.iter_any():
                received += chunk
    assert received == b"before the stall;"
    # Over gRPC the reason is explicit.
    pushed = await platform.deploy("stream-read-timeout")
    target = inf.Target(model_id=pushed.model.id, environment=inf.ENVIRONMENT_DEVELOPMENT)
    call = platform.inference.PredictStream(inf.PredictStreamRequest(target=target, payload=b"{}"), timeout=20)
    chunks = []
    with pytest.raises(grpc.aio.AioRpcError) as stalled:
        async for message in call:
            chunks.append(message.chunk)
    assert chunks == [b"before the stall;"], stalled.value
    assert stalled.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_reason(stalled.value) == "STREAM_STALLED"
    assert "streaming_read_timeout" in stalled.value.details()


async def test_truss_default_streaming_read_timeout_is_not_warned_about(platform):
    pushed = await platform.deploy("stream-sync-generator")  # streaming_read_timeout: 60
    assert not [w for w in pushed.warnings if "streaming_read_timeout" in w], pushed.warnings


async def test_a_streaming_read_timeout_out_of_range_is_refused(platform):
    package = platform.copy("stream-async-generator")
    (package / "config.yaml").write_text("model_name: bad-timeout\nruntime:\n  streaming_read_timeout: -1\n")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await platform.api.push(package)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "runtime.streaming_read_timeout" in refused.value.details()


# --- item 4: predict_concurrency ----------------------------------------------------------


async def test_postprocess_runs_outside_predict_concurrency(platform):
    url = await platform.url("concurrency-slow-postprocess")
    # Each postprocess waits for the other: with postprocess inside the single slot, neither returns.
    answers = await asyncio.gather(*(post(platform, url, {"n": n}) for n in (1, 2)))
    assert sorted(json.loads(body)["n"] for _, _, body in answers) == [1, 2]
    assert all(status == 200 and json.loads(body)["overlapped"] for status, _, body in answers)


async def test_a_stream_holds_the_predict_slot_only_while_it_generates(platform):
    url = await platform.url("concurrency-streaming-slot")
    # 32 MiB: more than the sockets and HTTP/2 windows between model and client hold, so a
    # client that stops reading stalls the sender.
    big = {"stream": True, "chunks": 16, "chunk_bytes": 2 * 1024 * 1024}
    async with platform.session.post(url, json=big) as slow_reader:
        assert slow_reader.status == 200
        await slow_reader.content.readexactly(1024)  # started; then this client stops reading
        status, _, body = await post(platform, url, {})
        assert (status, json.loads(body)) == (200, {"served": True})
        remaining = len(await slow_reader.read())
    assert remaining == 16 * 2 * 1024 * 1024 - 1024


# --- item 8: hooks and endpoints ----------------------------------------------------------


async def test_a_model_reporting_unhealthy_is_marked_unhealthy_and_replaced(platform, tmp_path):
    marker = tmp_path / "unhealthy"
    pushed = await platform.deploy("hook-is-healthy", f"environment_variables:\n  UNHEALTHY_MARKER: {marker}\n")
    url = f"{platform.http}/model/{pushed.model.id}/development/predict"
    first = json.loads((await post(platform, url, {}))[2])["instance"]
    marker.touch()
    unhealthy = await platform.api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_UNHEALTHY)
    assert "is_healthy() returned False" in unhealthy.status_message
    marker.unlink()
    await platform.api.wait_state(pushed.deployment.id, ACTIVE)
    status, _, body = await post(platform, url, {})
    assert status == 200 and json.loads(body)["instance"] != first


async def test_setup_environment_is_called_before_load_in_an_environment(platform):
    # Development is in no environment: Truss does not call setup_environment.
    status, _, body = await post(platform, await platform.url("hook-setup-environment"), {})
    assert (status, json.loads(body)["calls"]) == (200, [["load", None]])
    pushed = await platform.api.push(CORPUS / "hook-setup-environment", target=ds.PUSH_TARGET_PRODUCTION)
    await platform.api.wait_production(pushed.model.id, pushed.deployment.id, timeout=60)
    production = f"{platform.http}/model/{pushed.model.id}/production/predict"
    await wait_until(lambda: gateway_serves(platform, production, {}), what="the gateway to route to production")
    status, _, body = await post(platform, production, {})
    assert json.loads(body)["calls"] == [["setup_environment", {"name": "production"}], ["load", None]]


async def gateway_serves(platform: Platform, url: str, body: object) -> bool:
    """The route table reaches the gateway a moment after a promotion."""
    return (await post(platform, url, body))[0] == 200


async def test_openai_methods_are_served_on_the_deployment_and_production_routes(platform):
    pushed = await platform.api.push(CORPUS / "openai-chat-completions", target=ds.PUSH_TARGET_PRODUCTION)
    await platform.api.wait_production(pushed.model.id, pushed.deployment.id, timeout=60)
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}
    production = f"{platform.http}/model/{pushed.model.id}/production/sync/v1/chat/completions"
    await wait_until(lambda: gateway_serves(platform, production, chat), what="the gateway to route to production")
    for prefix in (
        f"/model/{pushed.model.id}/production",
        f"/model/{pushed.model.id}/deployment/{pushed.deployment.id}",
    ):
        status, _, body = await post(platform, f"{platform.http}{prefix}/sync/v1/chat/completions", chat)
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["content"] == "echo: hello there"
        status, _, body = await post(platform, f"{platform.http}{prefix}/sync/v1/completions", {"prompt": "abc"})
        assert (status, json.loads(body)["choices"][0]["text"]) == (200, "cba")
    # An OpenAI client streams even though it sends Accept: application/json.
    status, _, streamed = await post(
        platform,
        production,
        {**chat, "stream": True},
        Accept="application/json",
        **{"User-Agent": "OpenAI/Python 1.61.0"},
    )
    assert status == 200
    assert streamed.decode().endswith("data: [DONE]\n\n") and '"content": "hello"' in streamed.decode()


async def test_an_openai_method_the_model_lacks_is_404(platform):
    pushed = await platform.deploy("stream-async-generator")
    url = f"{platform.http}/model/{pushed.model.id}/development/sync/v1/chat/completions"
    status, _, body = await post(platform, url, {"messages": []})
    assert status == 404
    assert json.loads(body)["error"]["reason"] == "MODEL_METHOD_NOT_IMPLEMENTED"


async def test_a_model_sees_its_client_disconnect(platform, tmp_path):
    url = await platform.url("request-cancellation")
    calling = asyncio.create_task(post(platform, url, {"markers": str(tmp_path)}))
    await wait_until(lambda: (tmp_path / "started").exists(), what="the model to start")
    calling.cancel()  # the client goes away
    await wait_until(lambda: (tmp_path / "saw-disconnect").exists(), what="the model to see the disconnect")
    # An async method gets the same request: connected while its call runs.
    completions = url.replace("/predict", "/sync/v1/completions")
    status, _, body = await post(platform, completions, {})
    assert (status, json.loads(body)) == (200, {"disconnected": False, "content_type": "application/json"})


async def test_a_websocket_model_echoes_through_the_gateway(platform):
    url = await platform.url("websocket-echo", "websocket")
    async with platform.session.ws_connect(url) as ws:
        for text in ("hello", "again"):
            await ws.send_str(text)
            assert await ws.receive_str(timeout=10) == f"echo: {text}"
        await ws.send_str("bye")
        assert await ws.receive_json(timeout=10) == {"bye": True}
        closing = await ws.receive(timeout=10)
        assert closing.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1000
    # A model without websocket(): the session is accepted and closed with the reason.
    async with platform.session.ws_connect(await platform.url("msgpack-io", "websocket")) as ws:
        closing = await ws.receive(timeout=10)
        assert closing.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1011
        assert "MODEL_METHOD_NOT_IMPLEMENTED" in closing.extra
    # A websocket model has no predict.
    status, _, body = await post(platform, await platform.url("websocket-echo"), {})
    assert (status, json.loads(body)["error"]["reason"]) == (404, "MODEL_METHOD_NOT_IMPLEMENTED")


async def test_a_typed_model_answers_its_schema(platform):
    async with platform.session.get(await platform.url("typed-pydantic", "sync/v1/models/model/schema")) as response:
        assert response.status == 200
        schema = await response.json()
    assert schema["input_schema"]["title"] == "Point"
    assert set(schema["input_schema"]["properties"]) == {"x", "y"}
    assert schema["output_schema"]["title"] == "Norm"
    assert schema["supports_streaming"] is False
    async with platform.session.get(await platform.url("msgpack-io", "sync/v1/models/model/schema")) as response:
        assert response.status == 404
        assert (await response.json())["error"]["reason"] == "NO_SCHEMA"


async def test_msgpack_bodies_are_decoded_and_answered_in_msgpack(platform):
    url = await platform.url("msgpack-io")
    payload = msgpack.packb({"values": [1, 2, 3], "blob": b"\x00\xff binary"})
    headers = {"Content-Type": "application/x-msgpack"}
    async with platform.session.post(url, data=payload, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-msgpack"
        answer = msgpack.unpackb(await response.read())
    assert answer == {"sum": 6, "blob_length": 9, "blob": b"\x00\xff binary"}
    async with platform.session.post(url, data=b"\xc1 not msgpack", headers=headers) as response:
        assert response.status == 400
        assert "MessagePack" in (await response.json())["error"]["message"]
