"""Truss packages (tests/truss_corpus/, each README says what Truss answers) pushed
through `slipway push` or the API, called through the gateway, answering as Truss does:
config keys, push flags, typed predict, HTTPException, the environment keyword, load
failures. One controller and one gateway serve the whole module."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil

import aiohttp
import grpc
import pytest
import pytest_asyncio
from click.testing import CliRunner
from conftest import Api, controller_settings, error_reason, start_gateway, stop_or_explain

from controller.server import Controller
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

CORPUS = pathlib.Path(__file__).parent / "truss_corpus"
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]


class Platform:
    def __init__(self, api: Api, controller: Controller, http: str, session: aiohttp.ClientSession) -> None:
        self.api, self.controller, self.http, self.session = api, controller, http, session

    def package(self, name: str, *siblings: str) -> pathlib.Path:
        """A copy of a corpus package, and of the corpus directories it refers to beside it
        (a push may not write into the source tree)."""
        for directory in (*siblings, name):
            if not (self.api.tmp / directory).exists():
                shutil.copytree(CORPUS / directory, self.api.tmp / directory)
        return self.api.tmp / name

    def cli(self, *args: str):
        from slipway.cli import cli

        return CliRunner().invoke(cli, ["--controller", self.controller.address, *args])

    async def serving(self, deployment_id: str, timeout: float = 60) -> r.Deployment:
        return await self.api.wait_state(deployment_id, r.DEPLOYMENT_STATE_ACTIVE, timeout)

    async def post(self, model_id: str, deployment_id: str, body: object) -> tuple[int, object]:
        url = f"{self.http}/model/{model_id}/deployment/{deployment_id}/predict"
        async with self.session.post(url, json=body) as response:
            return response.status, await response.json()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("truss-config")
    controller = await Controller.start(controller_settings(root / "data"))
    gateway = await start_gateway(controller)
    channel = grpc.aio.insecure_channel(controller.address)
    session = aiohttp.ClientSession()
    api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), root)
    yield Platform(api, controller, f"http://127.0.0.1:{gateway.http_port}", session)
    await session.close()
    await channel.close()
    await stop_or_explain(gateway.stop(), "gateway")
    await stop_or_explain(controller.stop(), "controller")


async def push_with_cli(platform: Platform, *args: str) -> dict:
    result = await asyncio.to_thread(platform.cli, "push", *args, "--output", "json", "--no-wait")
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return json.loads(result.stdout)


# --- 1, 11: model_name is optional; push flags of truss push -----------------------------------


async def test_a_package_without_model_name_is_pushed_with_model_name(platform: Platform):
    package = platform.package("no-model-name")
    refused = await asyncio.to_thread(platform.cli, "push", str(package), "--no-wait")
    assert refused.exit_code == 1 and "MISSING_MODEL_NAME" in refused.stderr and "--model-name" in refused.stderr

    pushed = await push_with_cli(
        platform, str(package), "--model-name", "unnamed in config", "--metadata", '{"team": "vision", "rev": 3}'
    )
    assert pushed["model"]["name"] == "unnamed in config"
    deployment_id = pushed["deployment"]["id"]
    await platform.serving(deployment_id)
    assert await platform.post(pushed["model"]["id"], deployment_id, {"x": 1}) == (200, {"x": 1})
    events = await platform.api.deployments.ListEvents(ds.ListEventsRequest(deployment_id=deployment_id))
    assert [e.message for e in events.events if e.type == "deployment.metadata"] == ['{"rev":3,"team":"vision"}']


async def test_push_flags_are_checked_as_truss_push_checks_them(platform: Platform):
    package = str(platform.package("no-model-name"))
    # An environment the model does not have is the controller's refusal (and creates nothing).
    result = await asyncio.to_thread(platform.cli, "push", package, "--model-name", "flags", "--environment", "staging")
    assert result.exit_code == 1 and "ENVIRONMENT_NOT_FOUND" in result.stderr, result.output
    for args, expected in [
        (["--environment", "staging", "--publish"], "mutually exclusive"),  # --environment promotes
        (["--preserve-previous-production-deployment"], "needs --promote"),
        (["--metadata", "[1, 2]"], "must be a JSON object"),
        (["--metadata", "{nope"], "not valid JSON"),
    ]:
        result = await asyncio.to_thread(platform.cli, "push", package, "--model-name", "flags", *args)
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
    too_big = json.dumps({"blob": "x" * 20_000})
    result = await asyncio.to_thread(platform.cli, "push", package, "--model-name", "flags", "--metadata", too_big)
    assert result.exit_code == 1 and "METADATA_TOO_LARGE" in result.stderr

    # --environment production is --promote; --timeout-seconds bounds the wait, as in truss push.
    promoted = await asyncio.to_thread(
        platform.cli,
        "push",
        package,
        "--model-name",
        "flags",
        "--environment",
        "production",
        "--preserve-previous-production-deployment",
        "--timeout-seconds",
        "120",
    )
    assert promoted.exit_code == 0, promoted.output + promoted.stderr
    assert "is now production" in promoted.output + promoted.stderr


async def test_an_invalid_model_name_given_to_push_is_refused(platform: Platform):
    archive_dir = platform.package("no-model-name")
    from slipway.packaging import archive_package

    archive, digest = archive_package(archive_dir)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await platform.api.deployments.CreateDeployment(
            ds.CreateDeploymentRequest(package_archive=archive, package_sha256=digest, model_name="a/b")
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT and error_reason(refused.value) == (
        "INVALID_MODEL_NAME"
    )


# --- 2: what Truss's server provides: pydantic, numpy, HTTPException, opentelemetry -----------


async def test_typed_predict_validates_its_input_and_serialises_its_output(platform: Platform):
    pushed = await platform.api.push(platform.package("typed-pydantic"))
    await platform.serving(pushed.deployment.id)
    model, deployment = pushed.model.id, pushed.deployment.id
    assert await platform.post(model, deployment, {"x": 3, "y": 4}) == (200, {"norm": 5.0, "doubled": [6, 8]})
    status, body = await platform.post(model, deployment, {"x": "three"})
    assert status == 400
    assert body["error"]["reason"] == "INPUT_VALIDATION_FAILED"
    assert body["error"]["message"].startswith("Input Parsing Errors:")
    assert "`x`: Input should be a valid integer" in body["error"]["message"]
    assert "`y`: Field required" in body["error"]["message"]


async def test_http_exception_is_answered_with_its_status_and_detail(platform: Platform):
    pushed = await platform.api.push(platform.package("http-exception"))
    await platform.serving(pushed.deployment.id)
    model, deployment = pushed.model.id, pushed.deployment.id
    assert await platform.post(model, deployment, {"teapot": True}) == (418, {"error": "I'm a teapot"})
    assert await platform.post(model, deployment, {"missing": "w.bin"}) == (404, {"error": {"missing": "w.bin"}})
    assert await platform.post(model, deployment, {}) == (200, {"ok": True})


# --- 6: the environment keyword ------------------------------------------------------------------


async def test_the_environment_kwarg_is_none_outside_production(platform: Platform):
    package = platform.package("environment-kwarg")
    development = await platform.api.push(package)
    published = await platform.api.push(package, target=ds.PUSH_TARGET_PUBLISHED)
    production = await platform.api.push(package, target=ds.PUSH_TARGET_PRODUCTION)
    model = production.model.id
    for pushed, expected in [(development, None), (published, None), (production, {"name": "production"})]:
        await platform.serving(pushed.deployment.id)
        assert await platform.post(model, pushed.deployment.id, {}) == (200, {"environment": expected})


# --- 7, 10: transport and packaging keys ---------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "body", "answer"),
    [
        ("transport-http", {"a": 1}, {"a": 1}),
        ("bundled-packages", {"name": "truss"}, {"greeting": "hello truss"}),
        ("pyproject-requirements", {"text": "Hello Truss World"}, {"slug": "hello-truss-world"}),
        ("identity", {"any": ["json", 1]}, {"any": ["json", 1]}),
        ("async-pre-predict-post", {"value": 2}, {"stages": ["pre", "predict", "post"], "value": 29}),
        ("external-package-dirs", {"text": "hi"}, {"said": "HI!"}),
    ],
)
async def test_packaging_keys_are_honoured(platform: Platform, package, body, answer):
    siblings = ("external-shared",) if package == "external-package-dirs" else ()
    pushed = await platform.api.push(platform.package(package, *siblings))
    assert list(pushed.warnings) == []
    await platform.serving(pushed.deployment.id, timeout=240)
    assert await platform.post(pushed.model.id, pushed.deployment.id, body) == (200, answer)


@pytest.mark.parametrize(
    ("config", "key", "message"),
    [
        ("runtime: {transport: {kind: grpc}}\n", "runtime.transport", "'grpc' transport is not supported"),
        ("python_version: py399\n", "python_version", "this machine cannot provide"),
        ("python_version: py2.7\n", "python_version", "this machine cannot provide"),
        (
            "model_cache: [{repo_id: gpt2, allow_patterns: ['*.json']}]\n",
            "model_cache",
            "weights cannot be fetched here",
        ),
    ],
)
async def test_what_cannot_be_served_is_refused_naming_the_key(platform: Platform, config, key, message):
    package = platform.api.package("refused", extra_config=config)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await platform.api.push(package)
    assert error_reason(refused.value) == "UNSUPPORTED_PACKAGE_CONFIG"
    assert key in refused.value.details() and message in refused.value.details()


# --- 9: load failures ------------------------------------------------------------------------


async def test_a_load_that_raises_an_empty_exception_says_what_and_where(platform: Platform):
    pushed = await platform.api.push(platform.package("load-raises"))
    failed = await platform.api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_DEPLOY_FAILED)
    message = failed.status_message
    assert message.startswith("Exception (raised without a message)"), message
    assert 'File "model/model.py", line 7, in load' in message
    assert 'File "model/model.py", line 2, in fetch_weights' in message
    assert "replica/" not in message, "only the model's own frames"


async def test_a_request_sent_during_a_long_load_is_answered_once_loaded(platform: Platform):
    pushed = await platform.api.push(platform.package("long-load"))
    # Sent while load() runs (1.5 s): the gateway holds it until the model has loaded.
    await platform.api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_LOADING_MODEL)
    status, answer = await platform.post(pushed.model.id, pushed.deployment.id, {"n": 1})
    assert (status, answer) == (200, {"loaded": True, "input": {"n": 1}})
