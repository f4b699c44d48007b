"""Request IDs and the logs API through real processes: controller, gateway, replicas."""

from __future__ import annotations

import asyncio
import json
import struct
import sys

import aiohttp
import grpc
import pytest
from click.testing import CliRunner
from conftest import Api, error_reason, routing_metadata, wait_until

from slipway import request_ids
from slipway.cli import cli
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import log_service_pb2 as ls
from slipway.v1 import log_service_pb2_grpc as ls_grpc
from slipway.v1 import resources_pb2 as r

# Prints, writes to stderr and logs (at two levels) during predict, from the replica's
# model threads; a "later" input also writes from a thread of the model's own.
# Request IDs through a gateway hold on both data planes (tests/conftest.py).
pytestmark = pytest.mark.both_data_planes

TALKING_MODEL = """
import logging, sys

log = logging.getLogger("talker")

class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        print("loaded the talker")

    def predict(self, model_input):
        print(f"handling {model_input}")
        sys.stderr.write(f"stderr for {model_input}\\n")
        log.info(f"info for {model_input}")
        log.warning(f"warning for {model_input}")
        return {"input": model_input}
"""


@pytest.fixture
async def logs(api: Api) -> ls_grpc.LogServiceStub:
    return ls_grpc.LogServiceStub(api.channel)


async def talker(api: Api) -> r.Deployment:
    pushed = await api.push(api.package("talker", source=TALKING_MODEL), target=ds.PUSH_TARGET_PUBLISHED)
    return await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)


async def post(gateway, path: str, body: str, headers: dict | None = None) -> aiohttp.ClientResponse:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{gateway.http_port}{path}",
            data=body,
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as response,
    ):
        await response.read()
        return response


async def request_records(logs, deployment_id: str, request_id: str, count: int) -> list[ls.LogRecord]:
    async def found():
        page = await logs.ListLogs(
            ls.ListLogsRequest(
                filter=ls.LogFilter(deployment_id=deployment_id, request_id=request_id),
                order=ls.LOG_ORDER_OLDEST_FIRST,
            )
        )
        return list(page.records) if len(page.records) >= count else None

    return await wait_until(found, 20, f"{count} records of request {request_id}")


async def test_a_request_s_lines_are_found_by_the_id_its_answer_carries(api: Api, gateway, logs):
    deployment = await talker(api)
    path = f"/model/{deployment.model_id}/deployment/{deployment.id}/predict"
    first = await post(gateway, path, '"one"')
    second = await post(gateway, path, '"two"')
    assert first.status == second.status == 200
    first_id = first.headers[request_ids.RESPONSE_HEADER]
    second_id = second.headers[request_ids.RESPONSE_HEADER]
    assert first_id != second_id and request_ids.is_valid(first_id)

    records = await request_records(logs, deployment.id, first_id, 4)
    assert [(rec.stream, rec.level, rec.message) for rec in records] == [
        (ls.LOG_STREAM_STDOUT, ls.LOG_LEVEL_INFO, "handling one"),
        (ls.LOG_STREAM_STDERR, ls.LOG_LEVEL_INFO, "stderr for one"),
        (ls.LOG_STREAM_LOGGING, ls.LOG_LEVEL_INFO, "info for one"),
        (ls.LOG_STREAM_LOGGING, ls.LOG_LEVEL_WARNING, "warning for one"),
    ]
    assert {(rec.request_id, rec.deployment_id, rec.model_id) for rec in records} == {
        (first_id, deployment.id, deployment.model_id)
    }
    assert records[2].logger == "talker" and records[0].replica_id == deployment.replicas[0].id

    # By model, level and text too; lines outside a request carry no ID.
    warnings = await logs.ListLogs(
        ls.ListLogsRequest(filter=ls.LogFilter(model_id="talker", min_level=ls.LOG_LEVEL_WARNING, text="TWO"))
    )
    assert [(rec.message, rec.request_id) for rec in warnings.records] == [("warning for two", second_id)]
    loaded = await logs.ListLogs(
        ls.ListLogsRequest(filter=ls.LogFilter(deployment_id=deployment.id, text="loaded the"))
    )
    assert [(rec.message, rec.request_id) for rec in loaded.records] == [("loaded the talker", "")]


async def test_a_caller_s_request_id_is_adopted_when_valid(api: Api, gateway, logs):
    deployment = await talker(api)
    path = f"/model/{deployment.model_id}/deployment/{deployment.id}/predict"
    adopted = await post(gateway, path, '"mine"', {"X-Request-Id": "trace-42.a:b"})
    assert adopted.headers[request_ids.RESPONSE_HEADER] == "trace-42.a:b"
    records = await request_records(logs, deployment.id, "trace-42.a:b", 4)
    assert records[0].message == "handling mine"
    for invalid in ("has space", "x" * 129, "é"):
        refused = await post(gateway, path, '"theirs"', {"X-Request-Id": invalid})
        assert refused.status == 200
        fresh = refused.headers[request_ids.RESPONSE_HEADER]
        assert fresh != invalid and fresh.startswith("req-")
    # Errors carry one too: an unknown deployment, an unknown path.
    missing = await post(gateway, f"/model/{deployment.model_id}/deployment/nope/predict", '"x"')
    assert missing.status == 404 and missing.headers[request_ids.RESPONSE_HEADER].startswith("req-")
    unknown = await post(gateway, "/nowhere", '"x"', {"X-Request-Id": "lost-1"})
    assert unknown.status == 404 and unknown.headers[request_ids.RESPONSE_HEADER] == "lost-1"


async def test_grpc_answers_carry_the_request_id_in_trailing_metadata(api: Api, gateway, logs):
    deployment = await talker(api)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = inf_grpc.InferenceServiceStub(channel)
        target = inf.Target(deployment_id=deployment.id)
        routed = routing_metadata(target)
        call = stub.Predict(inf.PredictRequest(target=target, payload=b'"grpc"'), timeout=20, metadata=routed)
        await call
        request_id = dict(await call.trailing_metadata())[request_ids.METADATA_KEY]
        records = await request_records(logs, deployment.id, request_id, 4)
        assert records[0].message == "handling grpc"

        stream = stub.PredictStream(
            inf.PredictStreamRequest(target=target, payload=b'"streamed"'),
            metadata=((request_ids.CALLER_METADATA_KEY, "stream-7"), *routed),
            timeout=20,
        )
        assert [chunk async for chunk in stream]
        assert dict(await stream.trailing_metadata())[request_ids.METADATA_KEY] == "stream-7"
        assert (await request_records(logs, deployment.id, "stream-7", 4))[0].message == "handling streamed"

        nope = inf.Target(deployment_id="nope")
        failed = stub.Predict(
            inf.PredictRequest(target=nope, payload=b"1"), timeout=20, metadata=routing_metadata(nope)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await failed
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(refused.value)  # the status details survive beside the ID
        assert dict(refused.value.trailing_metadata())[request_ids.METADATA_KEY].startswith("req-")


async def test_tail_follows_new_lines(api: Api, gateway, logs):
    deployment = await talker(api)
    path = f"/model/{deployment.model_id}/deployment/{deployment.id}/predict"
    before = await post(gateway, path, '"before"')
    await request_records(logs, deployment.id, before.headers[request_ids.RESPONSE_HEADER], 4)  # stored
    tail = logs.TailLogs(
        ls.TailLogsRequest(filter=ls.LogFilter(deployment_id=deployment.id, text="handling"), initial_count=1)
    )
    received: list[ls.LogRecord] = []

    async def follow():
        async for message in tail:
            received.append(message.record)

    following = asyncio.create_task(follow())
    try:
        await wait_until(lambda: received, 20, "the stored line")
        assert [rec.message for rec in received] == ["handling before"]
        answered = await post(gateway, path, '"after"')
        await wait_until(lambda: len(received) == 2, 20, "the new line")
        assert received[1].message == "handling after"
        assert received[1].request_id == answered.headers[request_ids.RESPONSE_HEADER]
    finally:
        tail.cancel()
        following.cancel()


async def test_bad_filters_are_refused_with_a_reason(api: Api, logs):
    async def reason(**fields) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await logs.ListLogs(ls.ListLogsRequest(**fields))
        return error_reason(refused.value)

    assert await reason(filter=ls.LogFilter()) == "LOG_TARGET_REQUIRED"
    assert await reason(filter=ls.LogFilter(deployment_id="d-missing")) == "DEPLOYMENT_NOT_FOUND"
    assert await reason(filter=ls.LogFilter(model_id="m-missing")) == "MODEL_NOT_FOUND"
    pushed = await api.push(api.package("quiet"))
    target = ls.LogFilter(deployment_id=pushed.deployment.id)
    assert await reason(filter=ls.LogFilter(deployment_id=pushed.deployment.id, request_id="a b")) == (
        "INVALID_REQUEST_ID"
    )
    long_text = ls.LogFilter(deployment_id=pushed.deployment.id, text="x" * 257)
    assert await reason(filter=long_text) == "LOG_TEXT_FILTER_TOO_LONG"
    assert await reason(filter=target, page_size=1001) == "INVALID_PAGE_SIZE"
    assert await reason(filter=target, page_token="garbage") == "INVALID_PAGE_TOKEN"


async def test_connect_json_lists_logs_and_openapi_names_the_service(api: Api, controller, gateway):
    deployment = await talker(api)
    answered = await post(gateway, f"/model/{deployment.model_id}/deployment/{deployment.id}/predict", '"json"')
    request_id = answered.headers[request_ids.RESPONSE_HEADER]
    url = f"http://127.0.0.1:{controller.http_port}"
    async with aiohttp.ClientSession() as session:

        async def listed():
            async with session.post(
                f"{url}/slipway.v1.LogService/ListLogs",
                json={
                    "filter": {"deploymentId": deployment.id, "requestId": request_id},
                    "order": "LOG_ORDER_OLDEST_FIRST",
                },
            ) as response:
                assert response.status == 200, await response.text()
                body = json.loads(await response.read())
                return body if len(body.get("records", [])) == 4 else None

        body = await wait_until(listed, 20, "the request's records over Connect")
        assert body["records"][0]["message"] == "handling json"
        assert body["records"][0]["stream"] == "LOG_STREAM_STDOUT"
        # TailLogs as a Connect stream: enveloped JSON frames, the stored line first.
        request = json.dumps(
            {"filter": {"deploymentId": deployment.id, "text": "handling"}, "initialCount": 1}
        ).encode()
        async with session.post(
            f"{url}/slipway.v1.LogService/TailLogs",
            data=struct.pack(">BI", 0, len(request)) + request,
            headers={"Content-Type": "application/connect+json", "Connect-Timeout-Ms": "10000"},
        ) as response:
            assert response.status == 200
            flags, length = struct.unpack(">BI", await response.content.readexactly(5))
            frame = json.loads(await response.content.readexactly(length))
            assert flags == 0 and frame["record"]["message"] == "handling json"
            assert frame["record"]["requestId"] == request_id
        async with session.get(f"{url}/openapi.json") as response:
            document = await response.json()
        assert "/slipway.v1.LogService/ListLogs" in document["paths"]
        assert "/slipway.v1.LogService/TailLogs" in document["paths"]


async def test_cli_finds_a_request_s_lines_and_follows_new_ones(api: Api, controller, gateway, logs):
    deployment = await talker(api)
    path = f"/model/{deployment.model_id}/deployment/{deployment.id}/predict"
    answered = await post(gateway, path, '"cli"')
    other = await post(gateway, path, '"other"')
    request_id = answered.headers[request_ids.RESPONSE_HEADER]
    await request_records(logs, deployment.id, request_id, 4)
    # Both requests' lines collected before the model-wide listing below reads them.
    await request_records(logs, deployment.id, other.headers[request_ids.RESPONSE_HEADER], 4)
    base = ["--controller", controller.address, "logs"]
    result = await asyncio.to_thread(CliRunner().invoke, cli, [*base, deployment.id, "--request-id", request_id])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(f" {request_id} ", 1)[-1] for line in lines] == [
        "handling cli",
        "stderr for cli",
        "info for cli",
        "warning for cli",
    ]
    assert all(request_id in line for line in lines) and "WARNING" in lines[-1]
    as_json = await asyncio.to_thread(
        CliRunner().invoke, cli, [*base, "--model", "talker", "--level", "warning", "--since", "10m", "-o", "json"]
    )
    assert as_json.exit_code == 0, as_json.output
    assert [json.loads(line)["message"] for line in as_json.output.splitlines()] == [
        "warning for cli",
        "warning for other",
    ]

    follower = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "slipway",
        *base,
        deployment.id,
        "--follow",
        "--grep",
        "handling",
        "-n",
        "1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None
        first = await asyncio.wait_for(follower.stdout.readline(), 20)
        assert first.decode().rstrip().endswith("handling other")
        later = await post(gateway, path, '"later"')
        line = (await asyncio.wait_for(follower.stdout.readline(), 20)).decode()
        assert line.rstrip().endswith(f"{later.headers[request_ids.RESPONSE_HEADER]} handling later")
    finally:
        follower.kill()
        await follower.wait()


async def test_usage_errors_of_the_cli(controller):
    both = await asyncio.to_thread(CliRunner().invoke, cli, ["--controller", controller.address, "logs"])
    assert both.exit_code == 2 and "DEPLOYMENT_ID or --model" in both.output
    since = await asyncio.to_thread(
        CliRunner().invoke, cli, ["--controller", controller.address, "logs", "d-x", "--since", "soon"]
    )
    assert since.exit_code == 2 and "--since" in since.output


async def test_logs_of_a_deleted_deployment_stay_and_build_logs_come_through_the_same_api(
    api: Api, controller, gateway, logs
):
    pushed = await api.push(api.package("talker", source=TALKING_MODEL))
    development = await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
    answered = await post(gateway, f"/model/{development.model_id}/development/predict", '"gone"')
    request_id = answered.headers[request_ids.RESPONSE_HEADER]
    await request_records(logs, development.id, request_id, 4)
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=development.id))
    kept = await logs.ListLogs(ls.ListLogsRequest(filter=ls.LogFilter(deployment_id=development.id)))
    assert request_id in {rec.request_id for rec in kept.records}

    # A build's output (controller/builds.py writes it there) is listed with build=true only.
    build_log = controller.settings.data_dir / "builds" / "logs" / f"{development.id}.log"
    build_log.parent.mkdir(parents=True, exist_ok=True)
    build_log.write_text("Collecting tinylib\nSuccessfully installed tinylib\n")
    build = ls.LogFilter(deployment_id=development.id, build=True)

    async def built():
        records = (await logs.ListLogs(ls.ListLogsRequest(filter=build, order=ls.LOG_ORDER_OLDEST_FIRST))).records
        return records if len(records) == 2 else None

    records = await wait_until(built, 20, "the build's lines")
    assert [(rec.stream, rec.message, rec.replica_id) for rec in records] == [
        (ls.LOG_STREAM_BUILD, "Collecting tinylib", ""),
        (ls.LOG_STREAM_BUILD, "Successfully installed tinylib", ""),
    ]
    runtime = await logs.ListLogs(ls.ListLogsRequest(filter=ls.LogFilter(deployment_id=development.id)))
    assert ls.LOG_STREAM_BUILD not in {rec.stream for rec in runtime.records}


WEBSOCKET_MODEL = """
import fastapi

class Model:
    def __init__(self, **kwargs):
        pass

    async def websocket(self, websocket: fastapi.WebSocket):
        text = await websocket.receive_text()
        print(f"session says {text}")
        await websocket.send_text(f"echo: {text}")
"""


async def test_a_websocket_session_s_handshake_and_lines_carry_its_request_id(api: Api, gateway, logs):
    pushed = await api.push(
        api.package("sockets", source=WEBSOCKET_MODEL, extra_config="runtime:\n  transport:\n    kind: websocket\n"),
        target=ds.PUSH_TARGET_PUBLISHED,
    )
    deployment = await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
    url = f"http://127.0.0.1:{gateway.http_port}/model/{deployment.model_id}/deployment/{deployment.id}/websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers={"X-Request-Id": "ws-1"}) as ws:
        assert ws._response.headers[request_ids.RESPONSE_HEADER] == "ws-1"  # the handshake (aiohttp keeps it private)
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=10) == "echo: hello"
    [line] = await request_records(logs, deployment.id, "ws-1", 1)
    assert line.message == "session says hello"
