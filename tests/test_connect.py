"""The management API as JSON over HTTP (Connect), called the way curl or a browser calls
it: a real controller with its HTTP port on 0, plain POSTs with JSON bodies, server
streams read frame by frame, and a property-based fuzzer against /openapi.json."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import struct

import aiohttp
import grpc
import pytest
import pytest_asyncio

from controller.connect_api import ConnectLimits
from controller.keys import KeySettings
from controller.server import Controller
from slipway.packaging import archive_package
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from tests.conftest import ECHO_MODEL, controller_settings, stop_or_explain, wait_until, write_package

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_STREAMS = 3
JSON = {"Content-Type": "application/json"}
STREAM = {"Content-Type": "application/connect+json"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def controller(tmp_path_factory):
    limits = ConnectLimits(max_request_bytes=MAX_REQUEST_BYTES, max_concurrent_streams=MAX_STREAMS)
    running = await Controller.start(controller_settings(tmp_path_factory.mktemp("connect") / "data", connect=limits))
    yield running
    await stop_or_explain(running.stop(), "controller")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(controller):
    async with aiohttp.ClientSession(base_url=controller.http_url) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, body: dict | str | bytes, headers=JSON) -> tuple[int, dict]:
    data = json.dumps(body) if isinstance(body, dict) else body
    async with http.post(f"/slipway.v1.{method}", data=data, headers=headers) as response:
        return response.status, await response.json(content_type=None)


def reason(error: dict) -> str:
    [info] = [detail for detail in error["details"] if detail["type"] == "google.rpc.ErrorInfo"]
    assert base64.b64decode(info["value"] + "==")  # the proto bytes are there, as well as the debug JSON
    return info["debug"]["reason"]


def envelope(message: dict) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(payload)) + payload


async def frames(response: aiohttp.ClientResponse):
    """(flags, JSON) of each enveloped frame, until the end-of-stream frame."""
    while True:
        flags, length = struct.unpack(">BI", await response.content.readexactly(5))
        yield flags, json.loads(await response.content.readexactly(length))
        if flags & 0x02:
            return


async def push(http, tmp_path, name: str, target: str = "PUSH_TARGET_DEVELOPMENT", tag: str = "v1") -> dict:
    archive, digest = archive_package(write_package(tmp_path / f"{name}-{tag}", name, ECHO_MODEL.format(tag=tag)))
    body = {"packageArchive": base64.b64encode(archive).decode(), "packageSha256": digest, "target": target}
    status, created = await call(http, "DeploymentService/CreateDeployment", body)
    assert status == 200, created
    return created


async def test_unary_calls_in_json(http, tmp_path):
    created = await push(http, tmp_path, "connect-unary", "PUSH_TARGET_PUBLISHED")
    assert created["modelCreated"] is True
    model_id, deployment_id = created["model"]["id"], created["deployment"]["id"]

    status, got = await call(http, "ModelService/GetModel", {"modelId": model_id})
    assert status == 200 and got["model"]["name"] == "connect-unary"

    status, listed = await call(http, "DeploymentService/ListDeployments", {"modelId": model_id})
    assert status == 200 and [d["id"] for d in listed["deployments"]] == [deployment_id]

    # A field mask in its JSON form: comma-separated lowerCamelCase paths; the zero is set because it is named.
    update = {
        "deployment": {"id": deployment_id, "name": "blue", "autoscalingSettings": {"maxReplica": 3}},
        "updateMask": "name,autoscalingSettings.maxReplica,autoscalingSettings.minReplica",
    }
    status, updated = await call(http, "DeploymentService/UpdateDeployment", update)
    assert status == 200, updated
    assert updated["deployment"]["name"] == "blue"
    assert updated["deployment"]["autoscalingSettings"]["maxReplica"] == 3
    assert "minReplica" not in updated["deployment"]["autoscalingSettings"]  # zero: omitted by the JSON mapping

    # The binary protobuf codec of the same method.
    request = ms.GetModelRequest(model_id=model_id).SerializeToString()
    async with http.post(
        "/slipway.v1.ModelService/GetModel", data=request, headers={"Content-Type": "application/proto"}
    ) as response:
        assert response.status == 200 and response.content_type == "application/proto"
        assert ms.GetModelResponse.FromString(await response.read()).model.name == "connect-unary"


async def test_refusal_carries_status_and_reason(http, tmp_path):
    created = await push(http, tmp_path, "connect-refusal", "PUSH_TARGET_PRODUCTION")
    model_id, deployment_id = created["model"]["id"], created["deployment"]["id"]

    async def is_production():
        _, got = await call(http, "ModelService/GetModel", {"modelId": model_id})
        return got["model"].get("productionDeploymentId") == deployment_id

    await wait_until(is_production, 30, "the pushed deployment to become production")
    status, error = await call(http, "DeploymentService/DeleteDeployment", {"deploymentId": deployment_id})
    assert status == 400  # FAILED_PRECONDITION in Connect's mapping
    assert error["code"] == "failed_precondition"
    assert reason(error) == "PRODUCTION_NOT_DELETABLE"
    assert deployment_id in error["message"]
    _, still = await call(http, "DeploymentService/GetDeployment", {"deploymentId": deployment_id})
    assert still["deployment"]["id"] == deployment_id  # a refused call changes nothing

    status, error = await call(http, "DeploymentService/GetDeployment", {"deploymentId": "dep_missing"})
    assert (status, error["code"], reason(error)) == (404, "not_found", "DEPLOYMENT_NOT_FOUND")


@pytest.mark.parametrize(
    ("body", "why"),
    [("{not json", "Failed to load JSON"), ('{"modelId": 7}', "modelId"), ('{"nope": 1}', "nope")],
)
async def test_malformed_json_is_invalid_argument(http, body, why):
    status, error = await call(http, "ModelService/GetModel", body)
    assert (status, error["code"], reason(error)) == (400, "invalid_argument", "MALFORMED_REQUEST")
    assert why in error["message"]


async def test_unknown_and_internal_methods_are_404(http):
    for path in (
        "/slipway.v1.ModelService/Nope",
        "/slipway.v1.NopeService/GetModel",
        "/slipway.v1.RouteService/WatchRoutes",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ):
        async with http.post(path, data="{}", headers=JSON) as response:
            error = await response.json()
        assert (response.status, error["code"], reason(error)) == (404, "unimplemented", "UNKNOWN_METHOD"), path


async def test_protocol_refusals(http):
    status, error = await call(http, "ModelService/ListModels", "{}", headers={"Content-Type": "text/plain"})
    assert (status, reason(error)) == (415, "UNSUPPORTED_CONTENT_TYPE")
    status, error = await call(http, "ModelService/ListModels", "{}", headers={**JSON, "Content-Encoding": "snappy"})
    assert (status, error["code"], reason(error)) == (501, "unimplemented", "UNSUPPORTED_ENCODING")
    compressed = gzip.compress(b'{"pageSize": 1}')
    status, listed = await call(
        http, "ModelService/ListModels", compressed, headers={**JSON, "Content-Encoding": "gzip"}
    )
    assert status == 200 and len(listed.get("models", [])) <= 1
    status, error = await call(http, "ModelService/ListModels", "{}", headers={**JSON, "Connect-Timeout-Ms": "-1"})
    assert (status, reason(error)) == (400, "INVALID_TIMEOUT")
    for header in ({"X!Odd": "1"}, {"X-Note": "caf\u00e9"}, {"X-Token-Bin": "%%%"}):
        status, error = await call(http, "ModelService/ListModels", "{}", headers={**JSON, **header})
        assert (status, reason(error)) == (400, "MALFORMED_HEADER"), header
    status, _ = await call(http, "ModelService/ListModels", "{}", headers={**JSON, "Authorization": "Api-Key k"})
    assert status == 200  # forwarded as `authorization` metadata, which nothing checks yet
    oversized = json.dumps({"modelId": "x" * MAX_REQUEST_BYTES})
    status, error = await call(http, "ModelService/GetModel", oversized)
    assert (status, error["code"], reason(error)) == (429, "resource_exhausted", "REQUEST_TOO_LARGE")
    async with http.get("/slipway.v1.ModelService/ListModels") as response:
        assert response.status == 405


async def test_watch_deployments_streams_enveloped_frames(http, tmp_path):
    created = await push(http, tmp_path, "connect-watch", "PUSH_TARGET_PUBLISHED")
    deployment_id = created["deployment"]["id"]
    request = envelope({"deploymentId": deployment_id})
    async with http.post(
        "/slipway.v1.DeploymentService/WatchDeployments", data=request, headers={**STREAM, "Connect-Timeout-Ms": "4000"}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/connect+json"
        stream = frames(response)
        flags, first = await anext(stream)
        assert flags == 0 and first["initial"] is True and first["deployment"]["id"] == deployment_id
        update = {"deployment": {"id": deployment_id, "name": "watched"}, "updateMask": "name"}
        assert (await call(http, "DeploymentService/UpdateDeployment", update))[0] == 200
        async for flags, frame in stream:
            if flags == 0 and frame["deployment"]["name"] == "watched":
                break
        else:
            raise AssertionError("the stream ended before the rename arrived")
        # The client's deadline ends the stream: an end-of-stream frame with Connect's error JSON.
        flags, last = [frame async for frame in stream][-1]
        assert flags == 2 and last["error"]["code"] == "deadline_exceeded"


async def test_stream_refusals_end_the_stream(http):
    async def end_of(request: bytes, headers=STREAM) -> dict:
        async with http.post("/slipway.v1.DeploymentService/WatchDeployments", data=request, headers=headers) as r:
            assert r.status == 200
            body = [frame async for frame in frames(r)]
        assert body[-1][0] == 2
        return body[-1][1]["error"]

    error = await end_of(envelope({"deploymentId": "dep_missing"}))
    assert (error["code"], reason(error)) == ("not_found", "DEPLOYMENT_NOT_FOUND")
    error = await end_of(b'{"deploymentId": "x"}')  # no envelope
    assert (error["code"], reason(error)) == ("invalid_argument", "MALFORMED_ENVELOPE")
    status, error = await call(http, "DeploymentService/WatchDeployments", {})  # unary content type
    assert (status, reason(error)) == (415, "UNSUPPORTED_CONTENT_TYPE")

    open_streams = []
    try:
        for _ in range(MAX_STREAMS):
            response = await http.post(
                "/slipway.v1.DeploymentService/WatchDeployments", data=envelope({}), headers=STREAM
            )
            open_streams.append(response)
            assert response.status == 200
        error = await end_of(envelope({}))
        assert (error["code"], reason(error)) == ("resource_exhausted", "TOO_MANY_STREAMS")
    finally:
        for response in open_streams:
            response.close()


async def test_openapi_document_lists_public_methods(http):
    async with http.get("/openapi.json") as response:
        document = await response.json()
    paths = set(document["paths"])
    assert "/slipway.v1.ModelService/GetModel" in paths
    assert "/slipway.v1.DeploymentService/WatchDeployments" in paths
    assert not [path for path in paths if "RouteService" in path or "grpc." in path]
    request = document["components"]["schemas"]["slipway.v1.UpdateDeploymentRequest"]
    assert request["properties"]["updateMask"]["type"] == "string"


def fuzz(base_url: str) -> list[str]:
    """Schemathesis over every unary operation of /openapi.json: the problems it found."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    problems = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if "application/connect+json" in json.dumps(operation.definition.raw):
            continue  # streams are framed; test_watch_deployments covers them

        @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:
            case.call_and_validate(
                base_url=base_url,
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
                timeout=10,
            )

        try:
            check()
        except Exception as error:  # every operation is checked, all failures reported together
            problems.append(f"{operation.label}: {error}")
    return problems


async def test_fuzzing_the_openapi_document_finds_no_server_errors(controller, http):
    """Also: every answer has the content type and the schema the document gives."""
    assert await asyncio.to_thread(fuzz, controller.http_url) == []


async def test_stream_limits_and_shutdown_end_streams_with_a_frame(tmp_path):
    limits = ConnectLimits(max_stream_messages=1)
    running = await Controller.start(controller_settings(tmp_path / "data", connect=limits))
    stopped = False
    try:
        async with aiohttp.ClientSession(base_url=running.http_url) as http:
            path = "/slipway.v1.DeploymentService/WatchDeployments"
            async with http.post(path, data=envelope({}), headers=STREAM) as watch:
                created = await push(http, tmp_path, "connect-limit", "PUSH_TARGET_PUBLISHED", tag="a")
                await push(http, tmp_path, "connect-limit", "PUSH_TARGET_PUBLISHED", tag="b")
                received = [frame async for frame in frames(watch)]
            assert [flags for flags, _ in received] == [0, 2]
            error = received[-1][1]["error"]
            assert (error["code"], reason(error)) == ("resource_exhausted", "STREAM_MESSAGE_LIMIT")

            # Settled first: a state change while the next stream is open would be its second
            # message, over the limit of one, and end it before the shutdown does.
            deployment_id = created["deployment"]["id"]

            async def active() -> bool:
                _, body = await call(http, "DeploymentService/GetDeployment", {"deploymentId": deployment_id})
                return body["deployment"].get("state") == "DEPLOYMENT_STATE_ACTIVE"

            await wait_until(active, what="the deployment to settle")
            one = envelope({"deploymentId": deployment_id})
            async with http.post(path, data=one, headers=STREAM) as watch:
                stream = frames(watch)
                assert (await anext(stream))[0] == 0
                await stop_or_explain(running.stop(), "controller")
                stopped = True
                remaining = [frame async for frame in stream]
            flags, end = remaining[-1]
            assert (flags, end["error"]["code"], reason(end["error"])) == (2, "unavailable", "CONTROLLER_SHUTTING_DOWN")
    finally:
        if not stopped:
            await stop_or_explain(running.stop(), "controller")


async def test_a_taken_http_port_fails_the_start_and_stops_the_grpc_server(controller, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        grpc_port = probe.getsockname()[1]
    taken = controller_settings(tmp_path / "data", http_port=controller.http_port)
    taken.port = grpc_port
    with pytest.raises(OSError):
        await Controller.start(taken)
    # The half-started controller stopped what it had started: nothing answers on its gRPC port.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ms_grpc.ModelServiceStub(channel).ListModels(ms.ListModelsRequest(), timeout=2)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_api_keys_apply_to_connect_calls_as_to_grpc_calls(tmp_path):
    running = await Controller.start(controller_settings(tmp_path / "data", keys=KeySettings()))
    try:
        admin_key = (tmp_path / "data" / "admin.key").read_text().strip()
        async with aiohttp.ClientSession(base_url=running.http_url) as http:
            status, error = await call(http, "ModelService/ListModels", {})
            assert (status, error["code"], reason(error)) == (401, "unauthenticated", "API_KEY_MISSING")
            status, error = await call(
                http, "ModelService/ListModels", {}, headers={**JSON, "Authorization": "Api-Key x"}
            )
            assert (status, error["code"]) == (401, "unauthenticated")
            status, listed = await call(
                http, "ModelService/ListModels", {}, headers={**JSON, "Authorization": f"Api-Key {admin_key}"}
            )
            assert (status, listed) == (200, {})
    finally:
        await stop_or_explain(running.stop(), "controller")


async def test_a_quiet_stream_ends_when_its_client_leaves(controller, http, tmp_path):
    """A tail with nothing to send writes nothing, so no write finds out the client left:
    the controller notices the closed connection and ends the call (TailLogs slots are few)."""
    created = await push(http, tmp_path, "connect-quiet", "PUSH_TARGET_PUBLISHED")
    request = envelope({"filter": {"deploymentId": created["deployment"]["id"], "requestId": "never-used"}})
    response = await http.post("/slipway.v1.LogService/TailLogs", data=request, headers=STREAM)
    assert response.status == 200
    await wait_until(lambda: controller.log_servicer.tails == 1, what="the tail to be open")
    response.close()  # the client goes away without a word
    await wait_until(lambda: controller.log_servicer.tails == 0, timeout=10, what="the tail ended by the controller")
