"""A replica's direct routes (replica/direct.py), which the native data plane forwards to:
InferenceService on its gRPC port and POST /predict on its HTTP listener, through real
processes (controller, gateway, replicas), each answer compared with the gateway's."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
import urllib.error
import urllib.request

import aiohttp
import grpc
import pytest
from conftest import (
    Api,
    controller_settings,
    error_reason,
    start_gateway,
    stop_or_explain,
    wait_until,
    write_package,
)
from test_replica import TIMEOUT, TOKEN, ReplicaProcess, wait_for_file

from controller.server import Controller
from slipway.data_plane import REPLICA_PREDICT_PATH
from slipway.internal_auth import REPLICA_TOKEN_HEADER
from slipway.request_ids import CALLER_HEADER, CALLER_METADATA_KEY, METADATA_KEY, RESPONSE_HEADER
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import route_service_pb2 as rt

MODEL = """
import time
from fastapi import HTTPException

class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        kind = model_input.get("kind") if isinstance(model_input, dict) else None
        if kind == "fail":
            raise ValueError("the model cannot take this input")
        if kind == "http":
            raise HTTPException(status_code=418, detail={"why": "a teapot"})
        if kind == "slow":
            time.sleep(5)
        if kind == "stream":
            return self._chunks(model_input.get("n", 3), model_input.get("break"))
        if kind == "text":
            return (part for part in ("one ", "two"))
        return {"echo": model_input}

    def _chunks(self, n, broken):
        for i in range(n):
            yield {"chunk": i}
        if broken:
            raise RuntimeError("the stream broke")
"""
MAX_BYTES = 64 * 1024


@pytest.fixture
async def controller(tmp_path, database):
    """The conftest's controller, with a request limit a test can exceed cheaply."""
    settings = controller_settings(tmp_path / "data", database=database, max_request_bytes=MAX_BYTES)
    running = await Controller.start(settings)
    yield running
    await stop_or_explain(running.stop(), "controller")


@pytest.fixture
async def served(controller, api: Api, tmp_path):
    """A production deployment with one ready replica, a gateway, and the replica's route entry."""
    gateway = await start_gateway(controller, max_request_bytes=MAX_BYTES)
    pushed = await api.push(api.package("direct", source=MODEL), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(pushed.model.id, pushed.deployment.id)

    def endpoint() -> rt.Endpoint | None:
        """The replica's entry, once the gateway also routes the model's production to it."""
        route = gateway.follower.index.deployments.get(pushed.deployment.id)
        model = gateway.follower.index.models.get(pushed.model.id)
        routed = model is not None and any(e.name == "production" and e.deployments for e in model.environments)
        return route.endpoints[0] if routed and route is not None and route.endpoints else None

    try:
        entry = await wait_until(endpoint, 30, "a ready replica in the gateway's route table")
        async with (
            aiohttp.ClientSession() as session,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as via_gateway,
            grpc.aio.insecure_channel(entry.address) as direct,
        ):
            yield Served(pushed, gateway, entry, session, via_gateway, direct)
    finally:
        await gateway.stop()


class Served:
    def __init__(self, pushed, gateway, entry: rt.Endpoint, session, via_gateway, direct) -> None:
        self.model_id, self.deployment_id = pushed.model.id, pushed.deployment.id
        self.entry = entry
        self.session = session
        self.gateway_stub = inf_grpc.InferenceServiceStub(via_gateway)
        self.direct_stub = inf_grpc.InferenceServiceStub(direct)
        self.gateway_url = f"http://127.0.0.1:{gateway.http_port}/model/{self.model_id}/production/predict"
        self.direct_url = f"http://{entry.http_address}{REPLICA_PREDICT_PATH}"
        self.token = ((REPLICA_TOKEN_HEADER, entry.token),)

    async def both_grpc(self, payload: dict, stream: bool = False, request_id: str = "rid-1"):
        """(gateway, direct) outcomes of the same call: (code, details, reason, request ID trailer, answer)."""
        outcomes = []
        for stub, extra in ((self.gateway_stub, ()), (self.direct_stub, self.token)):
            target = inf.Target(model_id=self.model_id)
            body = json.dumps(payload).encode()
            metadata = (*extra, (CALLER_METADATA_KEY, request_id))
            if stream:
                call = stub.PredictStream(
                    inf.PredictStreamRequest(target=target, payload=body, content_type="application/json"),
                    timeout=20,
                    metadata=metadata,
                )
            else:
                call = stub.Predict(
                    inf.PredictRequest(target=target, payload=body, content_type="application/json"),
                    timeout=20,
                    metadata=metadata,
                )
            outcomes.append(await _outcome(call, stream))
        return outcomes

    async def both_http(self, body: bytes, headers: dict[str, str] | None = None):
        """(gateway, direct) answers to the same POST: (status, headers that matter, body)."""
        answers = []
        for url, extra in ((self.gateway_url, {}), (self.direct_url, dict(self.token))):
            async with self.session.post(url, data=body, headers={**(headers or {}), **extra}) as response:
                content = await response.read()
                kept = {k: response.headers.get(k) for k in ("Content-Type", RESPONSE_HEADER, "Transfer-Encoding")}
                answers.append((response.status, kept, content))
        return answers


async def _outcome(call, stream: bool):
    try:
        answer = [chunk.SerializeToString() async for chunk in call] if stream else (await call).SerializeToString()
        code, details, reason = grpc.StatusCode.OK, "", ""
    except grpc.aio.AioRpcError as error:
        answer = None
        code, details = error.code(), error.details()
        reason = error_reason(error)
    trailing = dict(await call.trailing_metadata() or ())
    return code, details, reason, trailing.get(METADATA_KEY), answer


async def test_the_route_table_names_each_replicas_http_route(served: Served, controller):
    host, _, port = served.entry.http_address.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert served.entry.http_address != served.entry.address
    rows = await controller.store.running_replicas()
    assert [row.id for row in rows] == [served.entry.replica_id]


async def test_grpc_predict_answers_as_the_gateway_does(served: Served):
    gateway, direct = await served.both_grpc({"x": 1})
    assert gateway == direct
    code, _, _, request_id, answer = direct
    assert code is grpc.StatusCode.OK and request_id == "rid-1"
    response = inf.PredictResponse.FromString(answer)
    assert response.deployment_id == served.deployment_id and json.loads(response.payload) == {"echo": {"x": 1}}

    for payload in ({"kind": "fail"}, {"kind": "http"}):
        gateway, direct = await served.both_grpc(payload)
        assert gateway == direct, payload
        assert direct[0] is not grpc.StatusCode.OK and direct[3] == "rid-1"
    assert direct[:3] == (grpc.StatusCode.FAILED_PRECONDITION, '{"why": "a teapot"}', "MODEL_HTTP_ERROR")

    for payload in ({"kind": "stream", "n": 3}, {"kind": "stream", "break": True}):
        gateway, direct = await served.both_grpc(payload, stream=True)
        assert gateway == direct, payload
    assert direct[:3] == (grpc.StatusCode.INTERNAL, "model raised RuntimeError: the stream broke", "MODEL_ERROR")

    # A request ID that is not a valid one is replaced (by a fresh ID, as the gateway does).
    *_, (_, _, _, fresh, _) = await served.both_grpc({"x": 1}, request_id="not valid!")
    assert fresh.startswith("req-")


async def test_grpc_predict_takes_only_the_replicas_token_and_its_own_target(served: Served):
    request = inf.PredictRequest(target=inf.Target(model_id=served.model_id), payload=b'"hi"')
    for metadata, reason in (
        ((), "REPLICA_TOKEN_MISSING"),
        (((REPLICA_TOKEN_HEADER, "wrong"),), "REPLICA_TOKEN_INVALID"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.direct_stub.Predict(request, timeout=10, metadata=metadata)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED and error_reason(refused.value) == reason

    for target in (
        inf.Target(deployment_id="d-someone-else"),
        inf.Target(model_id="m-someone-else"),
        inf.Target(model_id="another-name"),
    ):
        for call in (
            served.direct_stub.Predict(
                inf.PredictRequest(target=target, payload=b'"hi"'), timeout=10, metadata=served.token
            ),
            served.direct_stub.PredictStream(
                inf.PredictStreamRequest(target=target, payload=b'"hi"'), timeout=10, metadata=served.token
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call if isinstance(call, grpc.aio.UnaryUnaryCall) else [c async for c in call]
            assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert error_reason(refused.value) == "ROUTE_MISMATCH"

    # Its own deployment ID, its model's name, an environment, or no target at all are its own.
    for target in (
        inf.Target(deployment_id=served.deployment_id, model_id=served.model_id),
        inf.Target(model_id="direct", environment=inf.ENVIRONMENT_PRODUCTION),
        inf.Target(),
    ):
        response = await served.direct_stub.Predict(
            inf.PredictRequest(target=target, payload=b'"hi"'), timeout=10, metadata=served.token
        )
        assert response.deployment_id == served.deployment_id


async def test_grpc_predict_keeps_to_the_callers_deadline(served: Served):
    request = inf.PredictRequest(payload=b'{"kind": "slow"}')
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await served.direct_stub.Predict(request, timeout=0.5, metadata=served.token)
    assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_http_predict_answers_byte_for_byte_as_the_gateway_does(served: Served):
    json_body = {"Content-Type": "application/json", CALLER_HEADER: "rid-2"}
    cases = [
        (b'{"x": 1}', json_body),
        (b'{"x": 1}', {CALLER_HEADER: "rid-2"}),  # untyped: JSON
        (b'{"kind": "fail"}', json_body),
        (b'{"kind": "http"}', json_body),
        (b"not json", json_body),
        (b'{"kind": "stream", "n": 4}', json_body),
        (b'{"kind": "stream", "n": 4}', {**json_body, "Accept": "application/json"}),
        (b'{"kind": "text"}', {**json_body, "Accept": "application/json"}),
        (b'{"kind": "stream", "break": true}', json_body),
        (b"x" * (MAX_BYTES + 1), json_body),
    ]
    answers = {}
    for body, headers in cases:
        gateway, direct = await served.both_http(body, headers)
        assert gateway == direct, (body[:40], headers)
        answers[body[:40], tuple(headers)] = direct
    status, headers, content = answers[b'{"kind": "fail"}', tuple(json_body)]
    assert status == 500 and json.loads(content)["error"]["reason"] == "MODEL_ERROR"
    assert headers[RESPONSE_HEADER] == "rid-2"
    status, headers, content = answers[b'{"kind": "stream", "n": 4}', tuple(json_body)]
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    assert headers["Transfer-Encoding"] == "chunked" and content.count(b"\n") == 4
    status, _, content = answers[b'{"kind": "stream", "n": 4}', (*json_body, "Accept")]
    assert json.loads(content) == [{"chunk": i} for i in range(4)]
    status, _, content = answers[(b"x" * 40, tuple(json_body))]
    assert status == 413 and json.loads(content)["error"]["reason"] == "REQUEST_TOO_LARGE"


async def test_http_predict_takes_only_the_replicas_token(served: Served):
    for headers, reason in (({}, "REPLICA_TOKEN_MISSING"), ({REPLICA_TOKEN_HEADER: "wrong"}, "REPLICA_TOKEN_INVALID")):
        async with served.session.post(served.direct_url, data=b'"hi"', headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"]["reason"] == reason
    async with served.session.post(
        served.direct_url.replace("/predict", "/elsewhere"), headers=dict(served.token)
    ) as response:
        assert response.status == 404 and (await response.json())["error"]["reason"] == "NO_SUCH_ROUTE"


DRAINED_MODEL = """
import pathlib, time

class Model:
    def predict(self, model_input):
        if pathlib.Path({started!r}).exists():  # calls after the first answer at once
            return "quick"
        pathlib.Path({started!r}).touch()
        while not pathlib.Path({release!r}).exists():
            time.sleep(0.01)
        return "finished"
"""


def _post(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=b"{}", headers={"Content-Type": "application/json", REPLICA_TOKEN_HEADER: token}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_draining_replica_finishes_its_http_calls_and_refuses_new_ones(tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    package = write_package(
        tmp_path / "package",
        "drained",
        DRAINED_MODEL.format(started=str(started), release=str(release)),
        "runtime:\n  predict_concurrency: 4\n",
    )
    replica = ReplicaProcess(package, tmp_path, ["--drain-seconds", "60", "--late-arrival-seconds", "0"], {})
    try:
        state = replica.wait_ready().state()
        url = f"http://127.0.0.1:{state['http_port']}{REPLICA_PREDICT_PATH}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_post, url, TOKEN)
            wait_for_file(started)
            replica.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + TIMEOUT
            while (answer := _post(url, TOKEN))[0] == 200:  # until the replica has begun to drain
                assert time.monotonic() < deadline, "the replica never refused a new call"
            status, body = answer
            assert status == 503 and json.loads(body)["error"] == {
                "code": "UNAVAILABLE",
                "reason": "REPLICA_UNAVAILABLE",
                "message": "replica is shutting down",
            }
            release.touch()
            assert in_flight.result(timeout=TIMEOUT) == (200, b'"finished"')
        replica.assert_exits_with(0)
    finally:
        replica.close()
