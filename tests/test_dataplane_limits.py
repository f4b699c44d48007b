"""Data plane edges (issue 9, items 1-3), through real controller, gateway and replicas:
the request size limit is one setting honoured end to end; a failed deployment is refused
at once; a stream is labelled by what it carries and gathered for a JSON-only caller."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import grpc
import pytest
from click.testing import CliRunner
from conftest import (
    FAILING_MODEL,
    Api,
    controller_settings,
    error_reason,
    routing_metadata,
    start_gateway,
    stop_or_explain,
    wait_until,
)

from controller.server import Controller
from gateway.errors import GatewayError, from_replica
from gateway.forwarder import Forwarder
from gateway.routing import RouteIndex
from gateway.server import Gateway
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import resources_pb2 as r
from slipway.v1 import route_service_pb2 as rt

# Every test that starts a gateway runs on both data planes (tests/conftest.py).
pytestmark = pytest.mark.both_data_planes

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
MiB = 1024 * 1024
REPLICA_LIMIT = 1 * MiB  # the controller's setting, passed to its replicas
GATEWAY_LIMIT = 2 * MiB  # above the replicas' here, so that the replicas' own check shows

# Answers by the request: its size, a value of n bytes, or a stream of some kind.
SHAPES_MODEL = """
class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        if isinstance(model_input, str):
            return {"length": len(model_input)}
        kind = model_input["kind"]
        if kind == "value":
            return "x" * model_input["n"]
        if kind == "json":
            return ({"i": i} for i in range(2))
        if kind == "text":
            return (part for part in ["first;", "second;", "thïrd"])
        if kind == "bytes":
            return (part for part in [b"raw ", b"bytes"])
        if kind == "binary":
            return (part for part in [b"\\xff\\x00"])
        if kind == "chunks":
            return ("y" * model_input["n"] for _ in range(model_input["count"]))
        raise ValueError(kind)
"""

# load() waits for a file, then fails: a request can be waiting when the deployment fails.
FAILS_ON_SIGNAL_MODEL = """
import pathlib, time

class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        gate = pathlib.Path({gate!r})
        while not gate.exists():
            time.sleep(0.01)
        raise RuntimeError("weights are missing: told to fail")

    def predict(self, model_input):
        return None
"""


def json_string(size: int) -> bytes:
    """A JSON document (a string) of exactly `size` bytes."""
    return b'"' + b"a" * (size - 2) + b'"'


class Platform:
    """One controller and one gateway with the limits above, and clients to both."""

    def __init__(self, api: Api, gateway: Gateway, session: aiohttp.ClientSession, channel: grpc.aio.Channel) -> None:
        self.api = api
        self.gateway = gateway
        self.http = f"http://127.0.0.1:{gateway.http_port}"
        self.session = session
        self.stub = inf_grpc.InferenceServiceStub(channel)

    async def post(self, path: str, body: bytes, **headers: str) -> tuple[int, str, bytes]:
        headers = {"Content-Type": "application/json", **headers}
        async with self.session.post(self.http + path, data=body, headers=headers) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.read()

    async def error(self, path: str, body: bytes, **headers: str) -> tuple[int, dict]:
        status, content_type, answer = await self.post(path, body, **headers)
        assert content_type.startswith("application/json"), (status, content_type, answer)
        return status, json.loads(answer)["error"]

    async def grpc_predict(self, deployment_id: str, payload: bytes, timeout: float = 20) -> inf.PredictResponse:
        request = inf.PredictRequest(target=inf.Target(deployment_id=deployment_id), payload=payload)
        return await self.stub.Predict(request, timeout=timeout, metadata=routing_metadata(request.target))

    async def deploy(self, model_name: str, source: str) -> ds.CreateDeploymentResponse:
        pushed = await self.api.push(self.api.package(model_name, source=source))
        await self.api.wait_state(pushed.deployment.id, ACTIVE)
        await wait_until(
            lambda: self.gateway.follower.index.deployments.get(pushed.deployment.id, rt.DeploymentRoute()).endpoints,
            what="the deployment to be routed",
        )
        return pushed


async def start_platform(tmp_path, controller_limit: int | None, gateway_limit: int | None, data_plane: str):
    """A controller and a gateway on that data plane with those limits (None: the default)."""
    controller_limits = {} if controller_limit is None else {"max_request_bytes": controller_limit}
    gateway_limits = {} if gateway_limit is None else {"max_request_bytes": gateway_limit}
    controller = await Controller.start(controller_settings(tmp_path / "data", **controller_limits))
    return controller, await start_gateway(controller, data_plane=data_plane, **gateway_limits)


@pytest.fixture
async def platform_with(tmp_path, data_plane):
    started = []

    async def start(controller_limit: int | None = REPLICA_LIMIT, gateway_limit: int | None = GATEWAY_LIMIT):
        controller, gateway = await start_platform(tmp_path, controller_limit, gateway_limit, data_plane)
        session = aiohttp.ClientSession()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}", options=BIG_MESSAGES)
        control = grpc.aio.insecure_channel(controller.address)
        started.append((controller, gateway, session, channel, control))
        api = Api(control, ds_grpc.DeploymentServiceStub(control), ms_grpc.ModelServiceStub(control), tmp_path)
        return Platform(api, gateway, session, channel)

    yield start
    for controller, gateway, session, channel, control in started:
        await session.close()
        await channel.close()
        await control.close()
        await stop_or_explain(gateway.stop(), "gateway")
        await stop_or_explain(controller.stop(), "controller")


# The client's own limits stay out of the way: the platform's answers are under test.
BIG_MESSAGES = [("grpc.max_send_message_length", 256 * MiB), ("grpc.max_receive_message_length", 256 * MiB)]


@pytest.fixture
async def platform(platform_with) -> Platform:
    return await platform_with()


# --- 1. one size limit, end to end ---------------------------------------------------------


async def test_a_5_mib_body_is_served_with_the_default_limit_over_http_and_grpc(platform_with):
    platform = await platform_with(controller_limit=None, gateway_limit=None)
    pushed = await platform.deploy("shapes", SHAPES_MODEL)
    body = json_string(5 * MiB)  # over grpc's 4 MiB default, which the replicas used to keep

    status, _, answer = await platform.post(f"/model/{pushed.model.id}/development/predict", body)
    assert (status, json.loads(answer)) == (200, {"length": 5 * MiB - 2})
    response = await platform.grpc_predict(pushed.deployment.id, body)
    assert json.loads(response.payload) == {"length": 5 * MiB - 2}
    # The default is the documented one.
    assert platform.gateway.settings.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES == 64 * MiB


async def test_a_body_over_the_gateway_limit_is_413_resource_exhausted_naming_the_limit(platform: Platform):
    pushed = await platform.deploy("shapes", SHAPES_MODEL)
    path = f"/model/{pushed.model.id}/deployment/{pushed.deployment.id}/predict"

    status, error = await platform.error(path, json_string(GATEWAY_LIMIT + 1))
    assert status == 413
    assert (error["code"], error["reason"]) == ("RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE")
    assert f"over the limit of {GATEWAY_LIMIT} bytes (2 MiB" in error["message"]
    assert "--max-request-bytes" in error["message"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.grpc_predict(pushed.deployment.id, json_string(GATEWAY_LIMIT + 1))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(caught.value) == "REQUEST_TOO_LARGE"
    assert f"the request body is {GATEWAY_LIMIT + 1} bytes, over the limit of {GATEWAY_LIMIT}" in caught.value.details()


async def test_replicas_take_the_controllers_limit_and_refuse_with_the_same_reason(platform: Platform):
    pushed = await platform.deploy("shapes", SHAPES_MODEL)
    path = f"/model/{pushed.model.id}/development/predict"

    # Exactly the limit passes everywhere; one byte more passes the gateway (2 MiB) but not
    # the replica, which the controller started with its own setting (1 MiB).
    status, _, answer = await platform.post(path, json_string(REPLICA_LIMIT))
    assert (status, json.loads(answer)) == (200, {"length": REPLICA_LIMIT - 2})
    status, error = await platform.error(path, json_string(REPLICA_LIMIT + 1))
    assert (status, error["code"], error["reason"]) == (413, "RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE")
    assert f"over the limit of {REPLICA_LIMIT} bytes" in error["message"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.grpc_predict(pushed.deployment.id, json_string(REPLICA_LIMIT + 1))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(caught.value) == "REQUEST_TOO_LARGE"


async def test_an_answer_over_the_limit_is_response_too_large_not_overloaded(platform: Platform):
    pushed = await platform.deploy("shapes", SHAPES_MODEL)
    path = f"/model/{pushed.model.id}/development/predict"

    def ask(**what) -> bytes:
        return json.dumps(what).encode()

    cases = [
        ({"kind": "value", "n": REPLICA_LIMIT + 1}, "the model's response is"),
        ({"kind": "chunks", "n": REPLICA_LIMIT + 1, "count": 1}, "a chunk of the model's stream is"),
    ]
    for question, words in cases:
        status, error = await platform.error(path, ask(**question))
        assert (status, error["code"], error["reason"]) == (500, "RESOURCE_EXHAUSTED", "RESPONSE_TOO_LARGE")
        assert words in error["message"] and f"over the limit of {REPLICA_LIMIT} bytes" in error["message"]

    # A unary call gathers a stream: within the limit as a whole, although each chunk fits.
    small_chunks = ask(kind="chunks", n=REPLICA_LIMIT // 2, count=3)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.grpc_predict(pushed.deployment.id, small_chunks)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(caught.value) == "RESPONSE_TOO_LARGE"
    assert "joined into one response" in caught.value.details()
    # Streamed over HTTP, the same answer is fine: every chunk is under the limit.
    status, _, answer = await platform.post(path, small_chunks)
    assert (status, len(answer)) == (200, 3 * (REPLICA_LIMIT // 2))
    # Gathered for a JSON-only caller, it is over the gateway's limit.
    more_chunks = ask(kind="chunks", n=REPLICA_LIMIT - 1024, count=3)
    status, error = await platform.error(path, more_chunks, Accept="application/json")
    assert (status, error["reason"]) == (500, "RESPONSE_TOO_LARGE")
    assert f"over the limit of {GATEWAY_LIMIT} bytes" in error["message"]


def test_grpc_cores_own_size_refusal_is_never_overloaded():
    """A replica with other limits (one started by an older controller) refuses in grpc core,
    with no ErrorInfo: the gateway still says which message was too large, and not 429."""

    def refusal(message: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(), message
        )

    request = from_replica(refusal("Received message larger than max (5242914 vs. 4194304)"), request_bytes=5242914)
    assert (request.reason, request.http_status) == ("REQUEST_TOO_LARGE", 413)
    assert "over the limit of 4194304 bytes (4 MiB" in request.message
    response = from_replica(refusal("Received message larger than max (70000000 vs. 67174400)"), request_bytes=100)
    assert (response.reason, response.http_status) == ("RESPONSE_TOO_LARGE", 500)
    other = from_replica(refusal("memory quota exceeded"), request_bytes=100)
    assert other.reason != "REPLICA_OVERLOADED"


def test_the_cli_passes_one_setting_to_controller_and_gateway(monkeypatch, tmp_path):
    from slipway import cli

    seen = {}

    async def run_platform(controller_config, gateway_config, example, timeout, *workers_and_log_level):
        seen["up"] = (controller_config.max_request_bytes, gateway_config.max_request_bytes)

    async def run_controller(settings):
        seen["controller"] = settings.max_request_bytes

    async def run_gateway(settings):
        seen["gateway"] = settings.max_request_bytes

    monkeypatch.setattr(cli, "run_platform", run_platform)
    monkeypatch.setattr("controller.server.run_controller", run_controller)
    monkeypatch.setattr("gateway.server.run_gateway", run_gateway)
    monkeypatch.setattr(cli, "configure_logs", lambda level: None)
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    env = {"SLIPWAY_MAX_REQUEST_BYTES": "3000000"}
    for args in (["up", *data], ["controller", *data], ["gateway"]):
        result = runner.invoke(cli.cli, args, env=env)
        assert result.exit_code == 0, result.output
    assert runner.invoke(cli.cli, ["gateway", "--max-request-bytes", "5"]).exit_code == 0
    assert seen == {"up": (3000000, 3000000), "controller": 3000000, "gateway": 5}
    assert runner.invoke(cli.cli, ["gateway", "--max-request-bytes", "0"]).exit_code != 0


# --- 2. a failed deployment answers at once ------------------------------------------------


async def test_a_failed_deployment_is_refused_at_once_and_cannot_be_woken(platform: Platform):
    pushed = await platform.api.push(platform.api.package("broken", source=FAILING_MODEL.format(reason="r1")))
    deployment_id = pushed.deployment.id
    await platform.api.wait_state(deployment_id, r.DEPLOYMENT_STATE_DEPLOY_FAILED)
    await wait_until(
        lambda: platform.gateway.follower.index.deployments[deployment_id].state == r.DEPLOYMENT_STATE_DEPLOY_FAILED,
        what="the gateway to see the failure",
    )
    path = f"/model/{pushed.model.id}/development"

    started = time.monotonic()
    status, error = await platform.error(f"{path}/predict", b"{}")
    assert (status, error["code"], error["reason"]) == (503, "FAILED_PRECONDITION", "DEPLOYMENT_FAILED")
    assert "DEPLOY_FAILED" in error["message"] and "weights are missing: r1" in error["message"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.grpc_predict(deployment_id, b"{}")
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(caught.value) == "DEPLOYMENT_FAILED"
    assert "weights are missing: r1" in caught.value.details()
    assert time.monotonic() - started < platform.gateway.settings.replica_wait_seconds  # no wait for a replica

    status, error = await platform.error(f"{path}/wake", b"")
    assert (status, error["reason"]) == (503, "DEPLOYMENT_FAILED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.api.deployments.WakeDeployment(ds.WakeDeploymentRequest(deployment_id=deployment_id))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(caught.value) == "DEPLOYMENT_FAILED"
    assert "weights are missing: r1" in caught.value.details()


async def test_a_request_waiting_when_the_deployment_fails_is_answered_at_once(platform: Platform, tmp_path):
    gate = tmp_path / "fail-now"
    pushed = await platform.api.push(platform.api.package("late", source=FAILS_ON_SIGNAL_MODEL.format(gate=str(gate))))
    deployment_id = pushed.deployment.id
    await platform.api.wait_state(deployment_id, r.DEPLOYMENT_STATE_LOADING_MODEL)
    waiting = asyncio.create_task(platform.error(f"/model/{pushed.model.id}/development/predict", b"{}"))
    await wait_until(lambda: platform.gateway.forwarder.loads[deployment_id].queued == 1, what="the request to wait")

    gate.touch()
    status, error = await asyncio.wait_for(waiting, platform.gateway.settings.replica_wait_seconds - 1)
    assert (status, error["reason"]) == (503, "DEPLOYMENT_FAILED")
    assert "weights are missing: told to fail" in error["message"]


def test_build_failed_and_failed_states_are_refused_like_deploy_failed():
    index = RouteIndex()
    index.apply(
        rt.WatchRoutesResponse(
            reset=True,
            deployments=[
                rt.DeploymentRoute(deployment_id="d_build", active=True, state=r.DEPLOYMENT_STATE_BUILD_FAILED),
                rt.DeploymentRoute(deployment_id="d_failed", active=True, state=r.DEPLOYMENT_STATE_FAILED),
                rt.DeploymentRoute(deployment_id="d_loading", active=True, state=r.DEPLOYMENT_STATE_LOADING_MODEL),
            ],
        )
    )
    for deployment_id in ("d_build", "d_failed"):
        with pytest.raises(GatewayError) as caught:
            index.resolve("", deployment_id)
        assert (caught.value.reason, caught.value.http_status) == ("DEPLOYMENT_FAILED", 503)
    assert index.resolve("", "d_loading").deployment_id == "d_loading"  # still worth waiting for


class _QuietFollower:
    """Routes that never change."""

    async def changed(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False


async def test_no_ready_replica_states_the_wait_actually_spent():
    forwarder = Forwarder(_QuietFollower(), replica_wait_seconds=60, max_queued=10)
    waiting = rt.DeploymentRoute(deployment_id="d_slow", active=True, state=r.DEPLOYMENT_STATE_LOADING_MODEL)

    async def refusal(timeout: float) -> tuple[GatewayError, float, str]:
        with pytest.raises(GatewayError) as caught:
            await forwarder.unary(lambda: waiting, rs.InvokeRequest(payload=b"{}"), timeout=timeout)
        assert caught.value.reason == "NO_READY_REPLICA"
        spent = re.search(r"after waiting ([\d.]+)s \((.*)\)$", caught.value.message)
        assert spent is not None, caught.value.message
        return caught.value, float(spent[1]), spent[2]

    # The caller's deadline (0.5 s) ends the wait, not the gateway's 60 s.
    error, waited, bound = await refusal(timeout=0.5)
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.2 <= waited < 2 and bound == "the request's deadline", error.message
    # The gateway's own bound, when it is the shorter.
    forwarder.replica_wait_seconds = 0.3
    error, waited, bound = await refusal(timeout=600)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert 0.2 <= waited < 2 and bound == "the gateway waits at most 0.3s", error.message


# --- 3. streams are labelled, and gathered for a JSON-only caller ----------------------------


async def test_streams_are_labelled_by_what_they_carry_and_gathered_for_accept_json(platform: Platform):
    pushed = await platform.deploy("shapes", SHAPES_MODEL)
    path = f"/model/{pushed.model.id}/development/predict"

    def ask(kind: str) -> bytes:
        return json.dumps({"kind": kind}).encode()

    streamed = {kind: await platform.post(path, ask(kind)) for kind in ("json", "text", "bytes")}
    assert streamed == {
        "json": (200, "application/x-ndjson", b'{"i":0}\n{"i":1}\n'),
        "text": (200, "text/plain; charset=utf-8", "first;second;thïrd".encode()),
        "bytes": (200, "application/octet-stream", b"raw bytes"),
    }

    # Accept: application/json and nothing else: one JSON answer, as Truss gathers a stream.
    gathered = {kind: await platform.post(path, ask(kind), Accept="application/json") for kind in streamed}
    assert {kind: (status, kind_, json.loads(body)) for kind, (status, kind_, body) in gathered.items()} == {
        "json": (200, "application/json", [{"i": 0}, {"i": 1}]),
        "text": (200, "application/json", "first;second;thïrd"),
        "bytes": (200, "application/json", "raw bytes"),
    }
    status, error = await platform.error(path, ask("binary"), Accept="application/json")
    assert (status, error["reason"]) == (406, "NOT_ACCEPTABLE")

    # Like Truss: other Accept headers, and OpenAI clients (whose SDK always sends
    # Accept: application/json), keep the stream; a returned value is unchanged.
    for headers in ({"Accept": "application/json, text/plain"}, {"Accept": "*/*"}):
        assert await platform.post(path, ask("json"), **headers) == streamed["json"]
    openai = {"Accept": "application/json", "User-Agent": "OpenAI/Python 1.61.0"}
    assert await platform.post(path, ask("json"), **openai) == streamed["json"]
    status, content_type, body = await platform.post(path, json_string(10), Accept="application/json")
    assert (status, content_type, json.loads(body)) == (200, "application/json", {"length": 8})

    # A unary gRPC call on a streaming model gets the whole stream under the stream's type.
    response = await platform.grpc_predict(pushed.deployment.id, ask("json"))
    assert (response.payload, response.content_type) == (b'{"i":0}\n{"i":1}\n', "application/x-ndjson")
