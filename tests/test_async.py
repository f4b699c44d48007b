"""Async inference through real processes: a controller, a gateway, replica subprocesses and a
webhook receiver the test runs on loopback (allowed by the operator settings here)."""

from __future__ import annotations

import asyncio
import json
import pathlib

import aiohttp
import grpc
import pytest
from aiohttp import web
from conftest import Api, controller_settings, error_reason, start_gateway, stop_or_explain, wait_until
from google.protobuf import field_mask_pb2
from test_environments import create, promote

from controller.async_rules import AsyncSettings, verify
from controller.autoscaler import AutoscalerConfig
from controller.keys import KeySettings
from controller.server import Controller
from slipway.v1 import async_service_pb2 as asv
from slipway.v1 import async_service_pb2_grpc as asv_grpc
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import environment_service_pb2_grpc as es_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import key_service_pb2 as ks
from slipway.v1 import key_service_pb2_grpc as ks_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE

# Records each run (id and the attempt header), waits for a gate file when told, answers.
WORKER_MODEL = """
import json, pathlib, time
from starlette.requests import Request


class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input, request: Request):
        attempt = request.headers.get("x-slipway-async-attempt", "")
        if model_input.get("log"):
            with open(model_input["log"], "a") as f:
                f.write(json.dumps({"id": model_input.get("id"), "attempt": attempt}) + "\\n")
        gate = model_input.get("gate")
        while gate and not pathlib.Path(gate).exists():
            time.sleep(0.01)
        time.sleep(model_input.get("sleep", 0))
        if model_input.get("fail"):
            raise ValueError("asked to fail")
        return {"echo": model_input.get("id"), "attempt": attempt}
"""

TEST_ASYNC = AsyncSettings(
    min_queue_seconds=1,
    webhook_allow_private_addresses=True,
    webhook_allow_http=True,
    webhook_backoff_seconds=0.05,
    webhook_backoff_max_seconds=0.2,
    webhook_timeout_seconds=1.0,
    webhook_delivery_seconds=3.0,
    max_payload_bytes=64 * 1024,
    max_queued_per_deployment=3,
)


class Receiver:
    """A webhook receiver on loopback: answers `statuses` in turn (then 200), records what came."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[dict, bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()


class Platform:
    def __init__(self, controller, gateway, api: Api, session: aiohttp.ClientSession, tmp: pathlib.Path) -> None:
        self.controller = controller
        self.gateway = gateway
        self.api = api
        self.session = session
        self.http = f"http://127.0.0.1:{gateway.http_port}"
        self.tmp = tmp
        self.secrets = asv_grpc.WebhookSecretServiceStub(api.channel)

    async def deploy(self, name: str = "worker", target=ds.PUSH_TARGET_DEVELOPMENT) -> r.Deployment:
        pushed = await self.api.push(self.api.package(name, source=WORKER_MODEL), target=target)
        return await self.api.wait_state(pushed.deployment.id, ACTIVE)

    async def submit(self, model_id: str, headers: dict | None = None, route: str = "development", **body):
        async with self.session.post(
            f"{self.http}/model/{model_id}/{route}/async_predict", json=body, headers=headers or {}
        ) as response:
            return response.status, await response.json()

    async def status(self, request_id: str, headers: dict | None = None) -> tuple[int, dict]:
        async with self.session.get(f"{self.http}/async_request/{request_id}", headers=headers or {}) as response:
            return response.status, await response.json()

    async def wait_status(self, request_id: str, *statuses: str, timeout: float = 30.0) -> dict:
        async def check():
            code, body = await self.status(request_id)
            return body if code == 200 and body["status"] in statuses else None

        return await wait_until(check, timeout, f"{request_id} to be {statuses}")


@pytest.fixture
async def platform(tmp_path):
    controller = await Controller.start(controller_settings(tmp_path / "data", async_requests=TEST_ASYNC))
    gateway = await start_gateway(controller)
    async with (
        grpc.aio.insecure_channel(controller.address) as channel,
        aiohttp.ClientSession() as session,
    ):
        api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
        yield Platform(controller, gateway, api, session, tmp_path)
    await stop_or_explain(gateway.stop(), "gateway")
    await stop_or_explain(controller.stop(), "controller")


def runs(log: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_accepted_request_runs_and_its_result_is_stored_and_delivered_signed(platform: Platform):
    deployment = await platform.deploy()
    model_id = deployment.model_id
    secret = (await platform.secrets.RotateWebhookSecret(asv.RotateWebhookSecretRequest(model_id="worker"))).secret
    async with Receiver() as receiver:
        code, accepted = await platform.submit(model_id, model_input={"id": "a1"}, webhook_endpoint=receiver.url)
        assert code == 202, accepted
        assert accepted["deployment_id"] == deployment.id
        done = await platform.wait_status(accepted["request_id"], "SUCCEEDED")
        assert done["output"] == {"echo": "a1", "attempt": "1"}
        assert done["attempts"] == 1 and done["priority"] == 0
        await wait_until(lambda: receiver.received, 15, "the webhook delivery")
        headers, body = receiver.received[0]
        assert verify(secret, headers["X-Slipway-Webhook-Timestamp"], body, headers["X-Slipway-Signature"])
        assert not verify("whsec_other", headers["X-Slipway-Webhook-Timestamp"], body, headers["X-Slipway-Signature"])
        delivered = json.loads(body)
        assert delivered["request_id"] == accepted["request_id"] and delivered["status"] == "SUCCEEDED"
        assert delivered["output"] == {"echo": "a1", "attempt": "1"} and delivered["model_id"] == model_id
        final = await wait_until(
            lambda: _webhook_is(platform, accepted["request_id"], "SUCCEEDED"), 10, "webhook SUCCEEDED"
        )
        assert final["webhook"]["attempts"] == 1
    async with platform.session.get(f"{platform.controller.http_url}/metrics") as response:
        exposition = await response.text()
    labels = f'model_id="{model_id}"'
    assert f'slipway_webhook_attempts_total{{{labels},outcome="delivered"}} 1.0' in exposition
    assert f'slipway_async_queue_seconds_count{{deployment_id="{deployment.id}",{labels}}} 1.0' in exposition
    assert "slipway_async_queue_depth" in exposition and "slipway_webhook_failures_total" in exposition

    # The same over gRPC, by model name: accepted, fetched, listed.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.gateway.grpc_port}") as channel:
        stub = inf_grpc.InferenceServiceStub(channel)
        target = inf.Target(model_id="worker", environment=inf.ENVIRONMENT_DEVELOPMENT)
        answer = await stub.AsyncPredict(inf.AsyncPredictRequest(target=target, payload=b'{"id": "g1"}', priority=1))

        async def succeeded():
            got = await stub.GetAsyncRequest(inf.GetAsyncRequestRequest(request_id=answer.request_id))
            return got.request if got.request.status == asv.ASYNC_REQUEST_STATUS_SUCCEEDED else None

        got = await wait_until(succeeded, 30, "the gRPC request to succeed")
        assert json.loads(got.output) == {"echo": "g1", "attempt": "1"}
        assert got.webhook_status == asv.WEBHOOK_STATUS_NO_WEBHOOK and got.priority == 1
        listed = await stub.ListAsyncRequests(inf.ListAsyncRequestsRequest(model_id="worker", page_size=1))
        assert [x.request_id for x in listed.requests] == [answer.request_id] and listed.next_page_token
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CancelAsyncRequest(inf.CancelAsyncRequestRequest(request_id=answer.request_id))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(refused.value) == "ASYNC_REQUEST_NOT_QUEUED"


async def _webhook_is(platform: Platform, request_id: str, status: str) -> dict | None:
    _code, body = await platform.status(request_id)
    return body if body["webhook_status"] == status else None


def cli_of(platform: Platform):
    """Runs `slipway ...` against the platform's controller and gateway."""
    from click.testing import CliRunner

    from slipway.cli import cli

    base = [
        "--controller",
        platform.controller.address,
        "--gateway",
        f"127.0.0.1:{platform.gateway.grpc_port}",
        "--data-dir",
        str(platform.tmp / "nokey"),
    ]

    async def run(*args: str):
        return await asyncio.to_thread(CliRunner().invoke, cli, [*base, *args])

    return run


async def test_a_named_environment_takes_async_requests_over_http_and_grpc(platform: Platform):
    staged = await platform.deploy(target=ds.PUSH_TARGET_PUBLISHED)
    await create(es_grpc.EnvironmentServiceStub(platform.api.channel), "worker", "staging")
    assert (await promote(platform.api, staged.id, "staging")).completed

    async def accepted_by_staging() -> dict | None:  # once the gateway has the table with staging's deployment
        code, body = await platform.submit("worker", route="environments/staging", model_input={"id": "s1"})
        return body if code == 202 else None

    accepted = await wait_until(accepted_by_staging, what="staging to take an async request")
    assert accepted["deployment_id"] == staged.id
    done = await platform.wait_status(accepted["request_id"], "SUCCEEDED")
    assert done["output"] == {"echo": "s1", "attempt": "1"}
    code, refused = await platform.submit("worker", route="environments/qa", model_input={})
    assert (code, refused["error"]["reason"]) == (404, "ENVIRONMENT_NOT_FOUND"), refused
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.gateway.grpc_port}") as channel:
        target = inf.Target(model_id="worker", environment_name="staging")
        answer = await inf_grpc.InferenceServiceStub(channel).AsyncPredict(
            inf.AsyncPredictRequest(target=target, payload=b'{"id": "s2"}')
        )
        assert answer.deployment_id == staged.id
    assert (await platform.wait_status(answer.request_id, "SUCCEEDED"))["output"]["echo"] == "s2"
    # The CLI names the environment: a call, and a queued one.
    run = cli_of(platform)
    called = await run("predict", "worker", "--environment", "staging", '{"id": "c1"}')
    assert called.exit_code == 0 and json.loads(called.stdout)["echo"] == "c1", called.output
    waited = await run("predict", "--async", "worker", "--environment", "staging", '{"id": "c2"}', "--wait")
    assert waited.exit_code == 0 and json.loads(waited.stdout)["deployment_id"] == staged.id, waited.output
    missing = await run("predict", "worker", "--environment", "qa", "{}")
    assert missing.exit_code == 1 and "ENVIRONMENT_NOT_FOUND" in missing.output, missing.output
    both = await run("predict", "worker", "--environment", "staging", "--deployment", "development", "{}")
    assert both.exit_code == 2 and "give one" in both.output


async def test_webhook_retries_then_delivers_and_one_that_always_fails_keeps_the_result(platform: Platform):
    await platform.deploy()
    await platform.secrets.RotateWebhookSecret(asv.RotateWebhookSecretRequest(model_id="worker"))
    async with Receiver([500, 503]) as flaky, Receiver([500] * 1000) as broken:
        _, first = await platform.submit("worker", model_input={"id": "f"}, webhook_endpoint=flaky.url)
        _, second = await platform.submit("worker", model_input={"id": "b"}, webhook_endpoint=broken.url)
        delivered = await wait_until(lambda: _webhook_is(platform, first["request_id"], "SUCCEEDED"), 20, "retries")
        assert delivered["webhook"]["attempts"] == 3 and len(flaky.received) == 3
        failed = await wait_until(lambda: _webhook_is(platform, second["request_id"], "FAILED"), 20, "give up")
        assert failed["status"] == "SUCCEEDED" and failed["output"] == {"echo": "b", "attempt": "1"}
        assert "HTTP 500" in failed["webhook"]["error"] and len(broken.received) >= 3
    # Without a secret, a webhook is refused up front: deliveries are always signed.
    await platform.secrets.DeleteWebhookSecret(asv.DeleteWebhookSecretRequest(model_id="worker"))
    code, body = await platform.submit("worker", model_input={}, webhook_endpoint="http://127.0.0.1:9/hook")
    assert (code, body["error"]["reason"]) == (409, "WEBHOOK_SECRET_MISSING")


async def test_priorities_order_execution_and_queued_requests_expire_or_cancel(platform: Platform):
    await platform.deploy()
    log, gate = platform.tmp / "runs.log", platform.tmp / "gate"
    _, blocker = await platform.submit("worker", model_input={"id": "blocker", "log": str(log), "gate": str(gate)})
    await wait_until(lambda: runs(log), 30, "the blocker to run")
    ids = []
    for name, priority in (("p2", 2), ("p0a", 0), ("p1", 1)):
        code, body = await platform.submit("worker", model_input={"id": name, "log": str(log)}, priority=priority)
        assert code == 202, body
        ids.append(body["request_id"])
    # The queue holds 3 (TEST_ASYNC): one more is refused, saying so.
    code, body = await platform.submit("worker", model_input={"id": "x"})
    assert (code, body["error"]["reason"]) == (429, "ASYNC_QUEUE_FULL")
    # Cancel one; it never runs. A cancelled request cannot be cancelled again.
    async with platform.session.delete(f"{platform.http}/async_request/{ids[2]}") as response:
        assert response.status == 200 and (await response.json())["status"] == "CANCELED"
    async with platform.session.delete(f"{platform.http}/async_request/{ids[2]}") as response:
        assert response.status == 409
    code, expiring = await platform.submit("worker", model_input={"id": "late"}, max_time_in_queue_seconds=1)
    assert code == 202
    expired = await platform.wait_status(expiring["request_id"], "EXPIRED", timeout=15)
    assert expired["error"]["reason"] == "ASYNC_QUEUE_TIME_EXCEEDED" and expired["attempts"] == 0
    code, _ = await platform.submit("worker", model_input={"id": "p0b", "log": str(log)})
    gate.touch()
    await platform.wait_status(blocker["request_id"], "SUCCEEDED")
    await platform.wait_status(ids[0], "SUCCEEDED")
    assert [run["id"] for run in runs(log)] == ["blocker", "p0a", "p0b", "p2"]
    assert (await platform.status(ids[2]))[1]["status"] == "CANCELED"


async def test_refusals_are_precise(platform: Platform):
    deployment = await platform.deploy()
    cases = [
        ({"model_input": "x" * (70 * 1024)}, 413, "ASYNC_PAYLOAD_TOO_LARGE"),
        ({"model_input": 1, "priority": 3}, 400, "INVALID_PRIORITY"),
        ({"model_input": 1, "priority": "0"}, 400, "INVALID_ARGUMENT_TYPE"),
        ({"model_input": 1, "max_time_in_queue_seconds": 259201}, 400, "INVALID_MAX_TIME_IN_QUEUE"),
        ({"model_input": 1, "webhook_endpoint": "ftp://example.com/x"}, 400, "INVALID_WEBHOOK_ENDPOINT"),
        ({"input": 1}, 400, "UNKNOWN_FIELD"),
        ({}, 400, "MISSING_MODEL_INPUT"),
    ]
    for body, status, reason in cases:
        code, answer = await platform.submit(deployment.model_id, **body)
        assert (code, answer["error"]["reason"]) == (status, reason), body
    code, answer = await platform.submit(deployment.model_id, route="production", model_input=1)
    assert (code, answer["error"]["reason"]) == (404, "NO_PRODUCTION_DEPLOYMENT")
    assert (await platform.status("areq-nothing"))[0] == 404
    async with platform.session.post(
        f"{platform.http}/model/{deployment.model_id}/deployment/{deployment.id}/async_predict", data=b"not json"
    ) as response:
        assert response.status == 400 and (await response.json())["error"]["reason"] == "MALFORMED_REQUEST"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.gateway.grpc_port}") as channel:
        stub = inf_grpc.InferenceServiceStub(channel)
        target = inf.Target(deployment_id=deployment.id)
        calls = [
            (stub.AsyncPredict(inf.AsyncPredictRequest(target=target, payload=b"1", priority=5)), "INVALID_PRIORITY"),
            (
                stub.AsyncPredict(inf.AsyncPredictRequest(target=target, payload=b"1" * 70_000)),
                "ASYNC_PAYLOAD_TOO_LARGE",
            ),
            (stub.GetAsyncRequest(inf.GetAsyncRequestRequest(request_id="areq-none")), "ASYNC_REQUEST_NOT_FOUND"),
            (stub.GetAsyncRequest(inf.GetAsyncRequestRequest(request_id="bad id")), "INVALID_REQUEST_ID"),
            (stub.ListAsyncRequests(inf.ListAsyncRequestsRequest(model_id="nope")), "MODEL_NOT_FOUND"),
        ]
        for call, reason in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert error_reason(refused.value) == reason


async def test_a_queue_wakes_a_scaled_to_zero_deployment(tmp_path):
    settings = controller_settings(
        tmp_path / "data", async_requests=TEST_ASYNC, autoscaler=AutoscalerConfig(time_scale=0.01, wake_hold_seconds=0)
    )
    controller = await Controller.start(settings)
    gateway = await start_gateway(controller)
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel, aiohttp.ClientSession() as session:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            platform = Platform(controller, gateway, api, session, tmp_path)
            deployment = await platform.deploy("sleeper", target=ds.PUSH_TARGET_PUBLISHED)
            update = r.Deployment(id=deployment.id)
            update.autoscaling_settings.scale_down_delay = 0
            update.autoscaling_settings.autoscaling_window = 10
            await api.deployments.UpdateDeployment(
                ds.UpdateDeploymentRequest(
                    deployment=update,
                    update_mask=field_mask_pb2.FieldMask(
                        paths=["autoscaling_settings.scale_down_delay", "autoscaling_settings.autoscaling_window"]
                    ),
                )
            )
            await api.wait_state(deployment.id, r.DEPLOYMENT_STATE_SCALED_TO_ZERO)
            async with session.post(
                f"{platform.http}/model/{deployment.model_id}/deployment/{deployment.id}/async_predict",
                json={"model_input": {"id": "wake"}},
            ) as response:
                assert response.status == 202
                request_id = (await response.json())["request_id"]
            done = await platform.wait_status(request_id, "SUCCEEDED", timeout=60)
            assert done["output"]["echo"] == "wake"
    finally:
        await stop_or_explain(gateway.stop(), "gateway")
        await stop_or_explain(controller.stop(), "controller")


async def test_only_a_key_that_may_call_the_model_reads_or_cancels_its_requests(tmp_path):
    settings = controller_settings(tmp_path / "data", async_requests=TEST_ASYNC, keys=KeySettings())
    controller = await Controller.start(settings)
    gateway = await start_gateway(controller, require_api_keys=True)
    admin = (tmp_path / "data" / "admin.key").read_text().strip()
    auth = (("authorization", f"Api-Key {admin}"),)
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel, aiohttp.ClientSession() as session:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            for stub in ("deployments", "models"):
                _authorize(getattr(api, stub), auth)
            platform = Platform(controller, gateway, api, session, tmp_path)
            mine = await platform.deploy("mine")
            theirs = await platform.deploy("theirs")
            keys = ks_grpc.KeyServiceStub(channel)
            created = await keys.CreateKey(
                ks.CreateKeyRequest(name="mine", scope=ks.KEY_SCOPE_INFERENCE, model_ids=[mine.model_id]),
                metadata=auth,
            )
            own = {"Authorization": f"Api-Key {created.secret_key}"}
            full = {"Authorization": f"Api-Key {admin}"}
            code, accepted = await platform.submit(theirs.model_id, headers=full, model_input={"id": "t"})
            assert code == 202
            code, body = await platform.submit(theirs.model_id, headers=own, model_input={"id": "t"})
            assert code == 403, body
            code, body = await platform.status(accepted["request_id"], headers=own)
            assert code == 403, body
            async with session.delete(f"{platform.http}/async_request/{accepted['request_id']}", headers=own) as resp:
                assert resp.status == 403
            code, body = await platform.status(accepted["request_id"])
            assert code == 401, body
            code, body = await platform.submit(mine.model_id, headers=own, model_input={"id": "m"})
            assert code == 202
            code, body = await platform.status(body["request_id"], headers=own)
            assert code == 200 and body["model_id"] == mine.model_id
    finally:
        await stop_or_explain(gateway.stop(), "gateway")
        await stop_or_explain(controller.stop(), "controller")


def _authorize(stub, metadata) -> None:
    """Every call of the stub carries the key."""
    for name in dir(stub):
        method = getattr(stub, name)
        if callable(method) and name[:1].isupper():

            def call(*args, _method=method, **kwargs):
                kwargs.setdefault("metadata", metadata)
                return _method(*args, **kwargs)

            setattr(stub, name, call)


__all__ = ["Platform", "Receiver", "WORKER_MODEL", "asyncio"]


async def test_cli_predict_async_wait_and_requests_commands(platform: Platform):
    await platform.deploy()
    run = cli_of(platform)
    waited = await run("predict", "--async", "worker", "--deployment", "development", '{"id": "cli"}', "--wait")
    assert waited.exit_code == 0, waited.output
    shown = json.loads(waited.stdout)
    assert shown["status"] == "SUCCEEDED" and shown["output"] == {"echo": "cli", "attempt": "1"}
    queued = await run("predict", "--async", "worker", "--deployment", "development", '{"id": "q"}', "--priority", "2")
    assert queued.exit_code == 0, queued.output
    request_id = queued.stdout.strip()
    got = await run("requests", "get", request_id, "--wait")
    assert got.exit_code == 0 and json.loads(got.stdout)["request_id"] == request_id, got.output
    listed = await run("requests", "list", "--model", "worker", "-o", "json")
    assert [row["request_id"] for row in json.loads(listed.stdout)][0] == request_id
    assert request_id in (await run("requests", "list", "--model", "worker")).stdout
    cancelled = await run("requests", "cancel", request_id)
    assert cancelled.exit_code == 1 and "ASYNC_REQUEST_NOT_QUEUED" in cancelled.output, cancelled.output
    secret = await run("requests", "webhook-secret", "--model", "worker")
    assert secret.exit_code == 0 and secret.stdout.startswith("whsec_"), secret.output
    misuse = await run("predict", "worker", "{}", "--webhook", "https://example.com/h")
    assert misuse.exit_code == 2 and "go with --async" in misuse.output
