"""User API keys through real servers: a controller and a gateway with authentication on
(as `slipway up` runs them), real replicas, and every user surface called with each kind
of credential (issue 10, items 1-3)."""

from __future__ import annotations

import json
import logging
import pathlib
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
import pytest_asyncio
from click.testing import CliRunner
from conftest import (
    BACKEND_PLANE_CASES,
    BACKEND_PLANE_IDS,
    BACKENDS,
    Api,
    controller_settings,
    error_reason,
    new_database,
    require_data_plane,
    routing_metadata,
    start_gateway,
    stop_or_explain,
    wait_until,
)
from google.protobuf import duration_pb2

from controller.keys import KeySettings
from controller.server import Controller
from gateway.server import Gateway
from slipway.auth import FailureGuard, FailureLimits
from slipway.cli import cli
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import environment_service_pb2 as es
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import key_service_pb2 as ks
from slipway.v1 import key_service_pb2_grpc as ks_grpc
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r
from slipway.v1 import secret_service_pb2 as ss

pytestmark = pytest.mark.asyncio(loop_scope="module")


def pytest_generate_tests(metafunc):
    """Every test runs on both store backends (keys live in the store); those marked
    `both_data_planes` check keys on the gateway's hot path, and run on the native data
    plane too (on SQLite: tests/conftest.py)."""
    if "secured" in metafunc.fixturenames:
        if metafunc.definition.get_closest_marker("both_data_planes"):
            cases, ids = BACKEND_PLANE_CASES, BACKEND_PLANE_IDS
        else:
            cases, ids = tuple((backend, "python") for backend in BACKENDS), BACKENDS
        metafunc.parametrize("secured", cases, indirect=True, ids=ids, scope="module")


ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
CONTROLLER_SERVICES = (
    ms.DESCRIPTOR.services_by_name["ModelService"],
    ds.DESCRIPTOR.services_by_name["DeploymentService"],
    ks.DESCRIPTOR.services_by_name["KeyService"],
    ss.DESCRIPTOR.services_by_name["SecretService"],
    es.DESCRIPTOR.services_by_name["EnvironmentService"],
)
# The scope each controller method needs (what METHOD_SCOPES must say).
NEEDED = {
    **{f"/slipway.v1.ModelService/{m.name}": "deploy" for m in CONTROLLER_SERVICES[0].methods},
    **{f"/slipway.v1.DeploymentService/{m.name}": "deploy" for m in CONTROLLER_SERVICES[1].methods},
    "/slipway.v1.DeploymentService/WakeDeployment": "inference",
    **{f"/slipway.v1.SecretService/{m.name}": "admin" for m in CONTROLLER_SERVICES[3].methods},
    **{f"/slipway.v1.KeyService/{m.name}": "admin" for m in CONTROLLER_SERVICES[2].methods},
    **{f"/slipway.v1.EnvironmentService/{m.name}": "deploy" for m in CONTROLLER_SERVICES[4].methods},
}
STREAMING = {f"/{s.full_name}/{m.name}" for s in CONTROLLER_SERVICES for m in s.methods if m.server_streaming}
GRANTS = {
    "admin": {"admin", "deploy", "inference", "metrics"},
    "deploy": {"deploy", "inference"},
    "inference": {"inference"},
    "metrics": {"metrics"},
}


def header(key: str) -> str:
    return f"Api-Key {key}"


@dataclass
class Secured:
    controller: Controller
    gateway: Gateway
    admin_key: str
    keys: dict[str, str]  # kind → the whole key
    key_ids: dict[str, str]
    model_a: ds.CreateDeploymentResponse  # production
    model_b: ds.CreateDeploymentResponse  # production
    b_development: ds.CreateDeploymentResponse
    channel: grpc.aio.Channel  # plain: each call names its credential
    http: aiohttp.ClientSession
    base: str

    @property
    def gateway_grpc(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"

    async def call(self, method: str, authorization: str | None, request: bytes = b"") -> tuple[grpc.StatusCode, str]:
        """(code, ErrorInfo reason or "") of a call with that authorization value (None: none)."""
        metadata = () if authorization is None else (("authorization", authorization),)
        try:
            if method in STREAMING:
                call = self.channel.unary_stream(method)(request, metadata=metadata, timeout=5)
                await anext(aiter(call))
                call.cancel()
            else:
                await self.channel.unary_unary(method)(request, metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            reason = error_reason(error) if error.code() in (UNAUTHENTICATED, PERMISSION_DENIED) else ""
            return error.code(), reason
        return grpc.StatusCode.OK, ""

    async def post(self, path: str, authorization: str | None, body: bytes = b'"hi"') -> tuple[int, dict, dict]:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        async with self.http.post(self.base + path, data=body, headers=headers) as response:
            return response.status, dict(response.headers), json.loads(await response.read() or b"null")

    async def predict(self, authorization: str | None, target: inf.Target, stream: bool = False):
        async with grpc.aio.insecure_channel(self.gateway_grpc) as channel:
            metadata = () if authorization is None else (("authorization", authorization),)
            routed = routing_metadata(target)
            if stream:
                method = "/slipway.v1.InferenceService/PredictStream"
                request = inf.PredictStreamRequest(target=target, payload=b'"hi"').SerializeToString()
                call = channel.unary_stream(method)(request, metadata=metadata + routed, timeout=10)
                return [chunk async for chunk in call]
            request = inf.PredictRequest(target=target, payload=b'"hi"').SerializeToString()
            return await channel.unary_unary("/slipway.v1.InferenceService/Predict")(
                request, metadata=metadata + routed, timeout=10
            )


async def create_key(stub: ks_grpc.KeyServiceStub, scope: int, models=(), ttl: float | None = None, name=""):
    request = ks.CreateKeyRequest(scope=scope, model_ids=list(models), name=name)
    if ttl is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(nanos=int(ttl * 1e9)))
    return await stub.CreateKey(request)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secured(request, tmp_path_factory) -> AsyncIterator[Secured]:
    """A controller with API keys required, and a gateway, on a (store backend, data plane)."""
    backend, plane = request.param
    require_data_plane(plane)
    tmp = tmp_path_factory.mktemp("keys")
    # Every call comes from this host: refusals are not slowed here (FailureGuard is tested alone).
    unslowed = FailureLimits(free_failures=100_000)
    settings = controller_settings(
        tmp / "data",
        database=new_database(request, backend),
        keys=KeySettings(last_used_flush_seconds=0.1, failures=unslowed),
    )
    controller = await Controller.start(settings)
    gateway = await start_gateway(controller, require_api_keys=True, key_failures=unslowed, data_plane=plane)
    admin_key = (tmp / "data" / "admin.key").read_text().strip()
    channel = grpc.aio.insecure_channel(controller.address)
    admin_channel = grpc.aio.insecure_channel(controller.address, interceptors=[_AioKey(admin_key)])
    http = aiohttp.ClientSession()
    try:
        api = Api(
            admin_channel, ds_grpc.DeploymentServiceStub(admin_channel), ms_grpc.ModelServiceStub(admin_channel), tmp
        )
        model_a = await api.push(api.package("model-a"), target=ds.PUSH_TARGET_PRODUCTION)
        model_b = await api.push(api.package("model-b"), target=ds.PUSH_TARGET_PRODUCTION)
        b_development = await api.push(api.package("model-b", tag="dev"))
        await api.wait_production(model_a.model.id, model_a.deployment.id)
        await api.wait_production(model_b.model.id, model_b.deployment.id)
        for pushed in (model_a, model_b, b_development):
            await api.wait_state(pushed.deployment.id, ACTIVE)
        stub = ks_grpc.KeyServiceStub(admin_channel)
        created = {
            "admin": None,
            "deploy": await create_key(stub, ks.KEY_SCOPE_DEPLOY, name="ci"),
            "inference": await create_key(stub, ks.KEY_SCOPE_INFERENCE),
            "metrics": await create_key(stub, ks.KEY_SCOPE_METRICS),
            "inference_a": await create_key(stub, ks.KEY_SCOPE_INFERENCE, models=["model-a"]),
            "expired": await create_key(stub, ks.KEY_SCOPE_ADMIN, ttl=0.001),
            "revoked": await create_key(stub, ks.KEY_SCOPE_ADMIN),
        }
        await stub.RevokeKey(ks.RevokeKeyRequest(key_id=created["revoked"].key.id))
        keys = {kind: c.secret_key for kind, c in created.items() if c is not None}
        keys["admin"] = admin_key
        key_ids = {kind: c.key.id for kind, c in created.items() if c is not None}
        await wait_until(
            lambda: (
                gateway.follower.index.api_keys.get(key_ids["revoked"], None)
                and gateway.follower.index.api_keys[key_ids["revoked"]].revoked
            ),
            what="the gateway to know the keys",
        )
        for pushed in (model_a, model_b, b_development):
            await wait_until(
                lambda p=pushed: gateway.follower.index.deployments[p.deployment.id].endpoints, what="routes"
            )
        yield Secured(
            controller,
            gateway,
            admin_key,
            keys,
            key_ids,
            model_a,
            model_b,
            b_development,
            channel,
            http,
            f"http://127.0.0.1:{gateway.http_port}",
        )
    finally:
        await http.close()
        await channel.close()
        await admin_channel.close()
        await stop_or_explain(gateway.stop(), "gateway")
        await stop_or_explain(controller.stop(), "controller")


class _AioKey(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_unary(self, continuation, details, request):
        details = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), ("authorization", header(self.key))),
            details.credentials,
            details.wait_for_ready,
        )
        return await continuation(details, request)


# --- bootstrapping ------------------------------------------------------------------------


async def test_first_start_writes_an_admin_key_only_its_user_can_read(secured: Secured):
    path = pathlib.Path(secured.controller.settings.data_dir) / "admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secured.admin_key.startswith("sk_")
    # The admin key manages keys.
    assert await secured.call("/slipway.v1.KeyService/ListKeys", header(secured.admin_key)) == (grpc.StatusCode.OK, "")


async def test_a_second_start_keeps_the_keys_and_writes_no_new_admin_key(tmp_path):
    data_dir = tmp_path / "data"
    first = await Controller.start(controller_settings(data_dir, keys=KeySettings()))
    await first.stop()
    written = (data_dir / "admin.key").read_text()
    second = await Controller.start(controller_settings(data_dir, keys=KeySettings()))
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            listed = await ks_grpc.KeyServiceStub(channel).ListKeys(
                ks.ListKeysRequest(), metadata=(("authorization", header(written.strip())),)
            )
        assert [k.name for k in listed.keys] == ["admin"]
        assert (data_dir / "admin.key").read_text() == written
    finally:
        await second.stop()


# --- every controller method: credentials and scopes -----------------------------------------


@pytest.mark.parametrize("method", sorted(NEEDED))
async def test_every_controller_method_refuses_bad_credentials(secured: Secured, method: str):
    unknown = "sk_aaaaaaaa_" + "A" * 43
    cases = [
        (None, "API_KEY_MISSING"),
        ("Basic dXNlcjpwYXNz", "API_KEY_INVALID"),
        ("Api-Key not-a-key", "API_KEY_INVALID"),
        (header(unknown), "API_KEY_INVALID"),
        (header(secured.keys["revoked"]), "API_KEY_REVOKED"),
        (header(secured.keys["expired"]), "API_KEY_EXPIRED"),
    ]
    for authorization, reason in cases:
        assert await secured.call(method, authorization) == (UNAUTHENTICATED, reason), authorization


@pytest.mark.parametrize("method", sorted(NEEDED))
async def test_every_controller_method_takes_exactly_the_scopes_that_include_its_own(secured: Secured, method: str):
    for kind in ("admin", "deploy", "inference", "metrics"):
        code, reason = await secured.call(method, f"Bearer {secured.keys[kind]}")
        if NEEDED[method] in GRANTS[kind]:
            assert code not in (UNAUTHENTICATED, PERMISSION_DENIED), (kind, code)
        else:
            assert (code, reason) == (PERMISSION_DENIED, "API_KEY_SCOPE"), kind


async def test_a_refused_push_or_key_creation_changes_nothing(secured: Secured):
    async def counts() -> tuple[int, int]:
        async with grpc.aio.insecure_channel(
            secured.controller.address, interceptors=[_AioKey(secured.admin_key)]
        ) as c:
            deployments = await ds_grpc.DeploymentServiceStub(c).ListDeployments(ds.ListDeploymentsRequest())
            listed = await ks_grpc.KeyServiceStub(c).ListKeys(ks.ListKeysRequest(show_revoked=True))
        return len(deployments.deployments), len(listed.keys)

    before = await counts()
    package = await _archive(secured, "intruder")
    for kind in ("inference", "inference_a", "metrics"):
        assert await secured.call(
            "/slipway.v1.DeploymentService/CreateDeployment", header(secured.keys[kind]), package
        ) == (PERMISSION_DENIED, "API_KEY_SCOPE")
    request = ks.CreateKeyRequest(scope=ks.KEY_SCOPE_ADMIN).SerializeToString()
    for kind in ("deploy", "inference_a"):
        assert await secured.call("/slipway.v1.KeyService/CreateKey", header(secured.keys[kind]), request) == (
            PERMISSION_DENIED,
            "API_KEY_SCOPE",
        )
        revoke = ks.RevokeKeyRequest(key_id=secured.key_ids["inference"]).SerializeToString()
        assert (await secured.call("/slipway.v1.KeyService/RevokeKey", header(secured.keys[kind]), revoke))[
            0
        ] == PERMISSION_DENIED
    assert await counts() == before


async def _archive(secured: Secured, name: str) -> bytes:
    from conftest import ECHO_MODEL, write_package

    from slipway.packaging import archive_package

    root = pathlib.Path(secured.controller.settings.data_dir).parent / f"pkg-{name}"
    archive, digest = archive_package(write_package(root, name, ECHO_MODEL.format(tag=name)))
    return ds.CreateDeploymentRequest(package_archive=archive, package_sha256=digest).SerializeToString()


async def test_an_inference_key_for_model_a_cannot_wake_model_b_on_the_controller(secured: Secured):
    wake = lambda deployment_id: ds.WakeDeploymentRequest(deployment_id=deployment_id).SerializeToString()  # noqa: E731
    limited = header(secured.keys["inference_a"])
    method = "/slipway.v1.DeploymentService/WakeDeployment"
    assert await secured.call(method, limited, wake(secured.model_b.deployment.id)) == (
        PERMISSION_DENIED,
        "API_KEY_SCOPE",
    )
    assert await secured.call(method, limited, wake(secured.model_a.deployment.id)) == (grpc.StatusCode.OK, "")


# --- the gateway ----------------------------------------------------------------------------


def http_routes(secured: Secured) -> list[str]:
    a = secured.model_a
    return [
        f"/model/{a.model.id}/production/predict",
        f"/model/{a.model.id}/deployment/{a.deployment.id}/predict",
        f"/model/{a.model.id}/production/wake",
        f"/model/{a.model.id}/deployment/{a.deployment.id}/wake",
        f"/model/{secured.model_b.model.id}/development/predict",
        f"/model/{secured.model_b.model.id}/development/wake",
        "/no/such/route",
    ]


@pytest.mark.both_data_planes
async def test_every_http_route_refuses_bad_credentials_with_401_and_www_authenticate(secured: Secured):
    cases = [
        (None, "API_KEY_MISSING"),
        ("Api-Key sk_x", "API_KEY_INVALID"),
        ("Token abc", "API_KEY_INVALID"),
        (header("sk_aaaaaaaa_" + "B" * 43), "API_KEY_INVALID"),
        (header(secured.keys["revoked"]), "API_KEY_REVOKED"),
        (header(secured.keys["expired"]), "API_KEY_EXPIRED"),
    ]
    a = secured.model_a
    truss_routes = [f"/model/{a.model.id}/production/sync/v1/chat/completions"]
    for path in [*http_routes(secured), *truss_routes]:
        for authorization, reason in cases:
            status, headers, body = await secured.post(path, authorization)
            assert (status, body["error"]["code"], body["error"]["reason"]) == (401, "UNAUTHENTICATED", reason), (
                path,
                authorization,
            )
            assert headers["WWW-Authenticate"].startswith("Api-Key")
    for path in (
        f"/model/{a.model.id}/production/websocket",
        f"/model/{a.model.id}/production/sync/v1/models/model/schema",
    ):
        async with secured.http.get(secured.base + path) as response:
            assert response.status == 401 and (await response.json())["error"]["reason"] == "API_KEY_MISSING", path


@pytest.mark.both_data_planes
async def test_http_routes_take_inference_deploy_and_admin_keys_and_refuse_metrics_keys(secured: Secured):
    for path in http_routes(secured)[:-1]:
        status, headers, body = await secured.post(path, header(secured.keys["metrics"]))
        assert (status, body["error"]["reason"]) == (403, "API_KEY_SCOPE"), path
        assert "WWW-Authenticate" not in headers
        for kind in ("inference", "deploy", "admin"):
            status, _, body = await secured.post(path, f"Bearer {secured.keys[kind]}")
            assert status in (200, 202), (path, kind, body)


@pytest.mark.both_data_planes
@pytest.mark.parametrize("stream", [False, True], ids=["Predict", "PredictStream"])
async def test_grpc_inference_refuses_bad_credentials_and_the_wrong_scope(secured: Secured, stream: bool):
    target = inf.Target(model_id=secured.model_a.model.id)
    cases = [
        (None, UNAUTHENTICATED, "API_KEY_MISSING"),
        ("Api-Key nope", UNAUTHENTICATED, "API_KEY_INVALID"),
        (header(secured.keys["revoked"]), UNAUTHENTICATED, "API_KEY_REVOKED"),
        (header(secured.keys["expired"]), UNAUTHENTICATED, "API_KEY_EXPIRED"),
        (header(secured.keys["metrics"]), PERMISSION_DENIED, "API_KEY_SCOPE"),
    ]
    for authorization, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await secured.predict(authorization, target, stream)
        assert (refused.value.code(), error_reason(refused.value)) == (code, reason), authorization
    for kind in ("inference", "deploy", "admin", "inference_a"):
        assert await secured.predict(header(secured.keys[kind]), target, stream)


@pytest.mark.both_data_planes
async def test_an_inference_key_for_model_a_cannot_call_model_b_by_any_name(secured: Secured):
    limited = header(secured.keys["inference_a"])
    a, b = secured.model_a, secured.model_b
    allowed = [
        f"/model/{a.model.id}/production/predict",
        f"/model/{a.model.name}/production/predict",
        f"/model/{a.model.id}/deployment/{a.deployment.id}/predict",
        f"/model/{a.model.id}/production/wake",
    ]
    for path in allowed:
        status, _, body = await secured.post(path, limited)
        assert status in (200, 202), (path, body)
    refused = [
        f"/model/{b.model.id}/production/predict",
        f"/model/{b.model.name}/production/predict",
        f"/model/{b.model.id}/deployment/{b.deployment.id}/predict",
        f"/model/{b.model.id}/development/predict",
        f"/model/{b.model.name}/development/wake",
        f"/model/{b.model.id}/deployment/{secured.b_development.deployment.id}/wake",
    ]
    for path in refused:
        status, _, body = await secured.post(path, limited)
        assert (status, body["error"]["reason"]) == (403, "API_KEY_SCOPE"), path
        assert secured.keys["inference_a"] not in json.dumps(body)
    for target in (
        inf.Target(model_id=b.model.id),
        inf.Target(model_id=b.model.name),
        inf.Target(deployment_id=b.deployment.id),
        inf.Target(model_id=b.model.id, environment=inf.ENVIRONMENT_DEVELOPMENT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await secured.predict(limited, target)
        assert (denied.value.code(), error_reason(denied.value)) == (PERMISSION_DENIED, "API_KEY_SCOPE"), target


@pytest.mark.both_data_planes
async def test_a_revocation_reaches_a_running_gateway_within_two_seconds(secured: Secured):
    async with grpc.aio.insecure_channel(secured.controller.address, interceptors=[_AioKey(secured.admin_key)]) as c:
        stub = ks_grpc.KeyServiceStub(c)
        created = await create_key(stub, ks.KEY_SCOPE_INFERENCE, name="short-lived")
        path = f"/model/{secured.model_a.model.id}/production/predict"

        async def accepted():
            return (await secured.post(path, header(created.secret_key)))[0] == 200

        await wait_until(accepted, timeout=2.0, what="the gateway to take the new key")
        await stub.RevokeKey(ks.RevokeKeyRequest(key_id=created.key.id))

    async def refused():
        status, _, body = await secured.post(path, header(created.secret_key))
        return status == 401 and body["error"]["reason"] == "API_KEY_REVOKED"

    await wait_until(refused, timeout=2.0, what="the gateway to refuse the revoked key")


@pytest.mark.both_data_planes
async def test_a_key_used_on_the_gateway_shows_when_it_was_last_used(secured: Secured):
    path = f"/model/{secured.model_a.model.id}/production/predict"
    assert (await secured.post(path, header(secured.keys["deploy"])))[0] == 200

    async def last_used():
        async with grpc.aio.insecure_channel(
            secured.controller.address, interceptors=[_AioKey(secured.admin_key)]
        ) as c:
            listed = await ks_grpc.KeyServiceStub(c).ListKeys(ks.ListKeysRequest())
        return next(k for k in listed.keys if k.id == secured.key_ids["deploy"]).HasField("last_used_time")

    await wait_until(last_used, timeout=10, what="the deploy key's last use")


# --- what refusals reveal, and repeated failures ------------------------------------------------


async def test_refusals_log_the_key_prefix_never_the_key(secured: Secured, caplog):
    caplog.set_level(logging.WARNING, logger="slipway.auth")
    revoked = secured.keys["revoked"]
    status, _, body = await secured.post(f"/model/{secured.model_a.model.id}/production/predict", header(revoked))
    assert status == 401
    assert revoked not in json.dumps(body) and secured.key_ids["revoked"] in body["error"]["message"]
    code, _ = await secured.call("/slipway.v1.KeyService/ListKeys", header(revoked))
    assert code == UNAUTHENTICATED
    logged = [record for record in caplog.records if record.name == "slipway.auth"]
    assert logged and all(revoked not in record.getMessage() + str(record.__dict__) for record in logged)
    assert {record.__dict__["fields"]["key_id"] for record in logged} == {secured.key_ids["revoked"]}
    secret_part = revoked.split("_", 2)[2]  # (the secret itself may hold "_")
    assert all(secret_part not in str(record.__dict__) for record in logged)


async def test_failures_are_counted_on_both_servers(secured: Secured):
    gateway_before = secured.gateway.authenticator.guard.total
    await secured.post(f"/model/{secured.model_a.model.id}/production/predict", None)
    assert secured.gateway.authenticator.guard.total == gateway_before + 1


async def test_a_peer_that_keeps_failing_waits_longer_each_time_up_to_a_bound():
    guard = FailureGuard(FailureLimits(free_failures=3, window_seconds=60, max_delay_seconds=2.0, max_peers=100))
    delays = [guard.failed("ipv4:10.0.0.1", now=1.0)[1] for _ in range(12)]
    assert delays[:3] == [0, 0, 0]
    assert all(later >= earlier for earlier, later in zip(delays[3:], delays[4:], strict=False))
    assert 0 < delays[3] < delays[6] and max(delays) == 2.0
    assert guard.failed("ipv4:10.0.0.2", now=1.0)[1] == 0  # another peer is not slowed
    assert guard.failed("ipv4:10.0.0.1", now=100.0) == (1, 0)  # a quiet window starts again
    for peer in range(1000):
        guard.failed(f"ipv4:192.0.2.{peer}", now=2.0)
    assert len(guard._peers) == 100


# --- key management rules and the CLI ------------------------------------------------------------


async def test_key_creation_refuses_what_it_cannot_honour(secured: Secured):
    async with grpc.aio.insecure_channel(secured.controller.address, interceptors=[_AioKey(secured.admin_key)]) as c:
        stub = ks_grpc.KeyServiceStub(c)
        cases = [
            (ks.CreateKeyRequest(), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_KEY_SCOPE"),
            (
                ks.CreateKeyRequest(scope=ks.KEY_SCOPE_DEPLOY, model_ids=["model-a"]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "KEY_MODELS_NEED_INFERENCE_SCOPE",
            ),
            (
                ks.CreateKeyRequest(scope=ks.KEY_SCOPE_INFERENCE, model_ids=["no-such-model"]),
                grpc.StatusCode.NOT_FOUND,
                "MODEL_NOT_FOUND",
            ),
            (
                ks.CreateKeyRequest(scope=ks.KEY_SCOPE_INFERENCE, name="no spaces"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_KEY_NAME",
            ),
            (
                ks.CreateKeyRequest(scope=ks.KEY_SCOPE_INFERENCE, ttl=duration_pb2.Duration(seconds=-5)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_KEY_TTL",
            ),
            (
                ks.CreateKeyRequest(scope=ks.KEY_SCOPE_INFERENCE, model_ids=["m"] * 101),
                grpc.StatusCode.INVALID_ARGUMENT,
                "TOO_MANY_KEY_MODELS",
            ),
        ]
        for request, code, reason in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateKey(request)
            assert (refused.value.code(), error_reason(refused.value)) == (code, reason), request
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.RevokeKey(ks.RevokeKeyRequest(key_id="nosuchkey"))
        assert (missing.value.code(), error_reason(missing.value)) == (grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND")


async def test_cli_creates_lists_and_revokes_keys_with_the_found_admin_key(secured: Secured, monkeypatch):
    import asyncio

    data_dir = str(secured.controller.settings.data_dir)
    monkeypatch.delenv("SLIPWAY_API_KEY", raising=False)
    base = ["--controller", secured.controller.address, "--data-dir", data_dir, "keys"]

    def run(*args: str):
        return asyncio.to_thread(CliRunner().invoke, cli, [*base, *args])

    created = await run(
        "create", "--scope", "inference", "--model", "model-a", "--expires", "30d", "--name", "cli", "-o", "json"
    )
    assert created.exit_code == 0, created.output
    answer = json.loads(created.output)
    secret, key = answer["secret_key"], answer["key"]
    assert key["scope"] == "KEY_SCOPE_INFERENCE" and key["model_ids"] == [secured.model_a.model.id]
    assert "expire_time" in key and secret.startswith(key["display_prefix"])

    listed = await run("list")
    assert listed.exit_code == 0 and key["display_prefix"] in listed.output
    assert secret not in listed.output and secured.admin_key not in listed.output

    revoked = await run("revoke", key["id"])
    assert revoked.exit_code == 0 and key["id"] in revoked.output
    assert key["display_prefix"] not in (await run("list")).output
    assert key["display_prefix"] in (await run("list", "--all")).output

    refused = await asyncio.to_thread(
        CliRunner().invoke, cli, ["--controller", secured.controller.address, "--api-key", secret, "models", "list"]
    )
    assert refused.exit_code == 1 and "UNAUTHENTICATED (API_KEY_REVOKED)" in refused.output
    bad_duration = await run("create", "--scope", "inference", "--expires", "soon")
    assert bad_duration.exit_code == 2 and "--expires" in bad_duration.output


async def test_the_cli_finds_the_admin_key_from_inside_a_package_directory(tmp_path, monkeypatch):
    from slipway.credentials import find_api_key

    (tmp_path / ".slipway").mkdir()
    (tmp_path / ".slipway" / "admin.key").write_text("sk_local\n")
    package = tmp_path / "my-model" / "model"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    monkeypatch.delenv("SLIPWAY_API_KEY", raising=False)
    monkeypatch.delenv("SLIPWAY_DATA_DIR", raising=False)
    assert find_api_key() == "sk_local"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "admin.key").write_text("sk_other")
    monkeypatch.setenv("SLIPWAY_DATA_DIR", str(tmp_path / "other"))
    assert find_api_key() == "sk_other"
    monkeypatch.setenv("SLIPWAY_API_KEY", "sk_env")
    assert find_api_key() == "sk_env"
    assert find_api_key("sk_flag") == "sk_flag"
