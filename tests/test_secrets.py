"""Platform-managed secrets (issue 10, item 7; issue 11, item 5), through a real controller,
gateway and replicas: set/list/delete over the API and the CLI, encrypted at rest, handed
only to packages that declare them, Truss's semantics when a model reads one, and the
SLIPWAY_SECRET_* fallback taken out of the controller's environment."""

from __future__ import annotations

import asyncio
import os
import stat

import aiohttp
import grpc
import pytest
from click.testing import CliRunner
from conftest import Api, controller_settings, error_reason, start_gateway, stop_or_explain

from controller.secrets import SecretLimits
from controller.server import Controller
from slipway.cli import cli
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r
from slipway.v1 import secret_service_pb2 as ss
from slipway.v1 import secret_service_pb2_grpc as ss_grpc

# Secrets live in the store: every test that starts a controller runs on SQLite and PostgreSQL.
pytestmark = pytest.mark.both_backends

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
VALUE = "s3cr3t-value-4b1d"

# Answers what its `secrets` gives for each name it is asked about.
READER_MODEL = """
import os

class Model:
    def __init__(self, **kwargs):
        self._secrets = kwargs["secrets"]

    def predict(self, model_input):
        if model_input == "environ":
            return sorted(name for name in os.environ if name.startswith("SLIPWAY_SECRET_"))
        return {name: self._secrets[name] for name in model_input}
"""


@pytest.fixture
async def platform(tmp_path, monkeypatch, database):
    monkeypatch.setenv("SLIPWAY_SECRET_FROM_ENV", "operator-value")
    controller = await Controller.start(
        controller_settings(
            tmp_path / "data",
            database=database,
            replica_user="controller",
            secret_limits=SecretLimits(max_value_bytes=64, max_secrets=4),
        )
    )
    gateway = await start_gateway(controller)
    channel = grpc.aio.insecure_channel(controller.address)
    session = aiohttp.ClientSession()
    api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
    yield controller, gateway, api, ss_grpc.SecretServiceStub(channel), session
    await session.close()
    await channel.close()
    await stop_or_explain(gateway.stop(), "gateway")
    await stop_or_explain(controller.stop(), "controller")


async def predict(session, gateway, model_id: str, body: str) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{gateway.http_port}/model/{model_id}/development/predict"
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json()


async def test_secrets_are_write_only_encrypted_and_refused_clearly(platform):
    controller, _, _, secrets, _ = platform
    await secrets.SetSecret(ss.SetSecretRequest(name="hf_token", value=VALUE.encode()))
    await secrets.SetSecret(ss.SetSecretRequest(name="hf_token", value=b"replaced-value"))
    listed = await secrets.ListSecrets(ss.ListSecretsRequest())
    assert [s.name for s in listed.secrets] == ["hf_token"]
    assert listed.secrets[0].update_time.ToNanoseconds() >= listed.secrets[0].create_time.ToNanoseconds() > 0
    assert b"replaced-value" not in listed.SerializeToString()

    data_dir = controller.settings.data_dir
    rows = await controller.store.backend.reader.fetchall("SELECT name, ciphertext FROM secrets")
    stored = b"".join(name.encode() + bytes(ciphertext) for name, ciphertext in rows)
    if not controller.settings.database:  # SQLite: not in the file (or its WAL) either
        stored += b"".join(path.read_bytes() for path in data_dir.glob("controller.db*"))
    assert b"replaced-value" not in stored and VALUE.encode() not in stored and b"hf_token" in stored
    key = data_dir / "secrets.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32

    refusals = [
        (ss.SetSecretRequest(name="bad name", value=b"x"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SECRET_NAME"),
        (ss.SetSecretRequest(name="big", value=b"x" * 65), grpc.StatusCode.INVALID_ARGUMENT, "SECRET_TOO_LARGE"),
        (ss.SetSecretRequest(name="binary", value=b"\xff\xfe"), grpc.StatusCode.INVALID_ARGUMENT, "SECRET_NOT_TEXT"),
    ]
    for request, code, reason in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await secrets.SetSecret(request)
        assert (refused.value.code(), error_reason(refused.value)) == (code, reason)
    for name in ("two", "three", "four"):
        await secrets.SetSecret(ss.SetSecretRequest(name=name, value=b"v"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await secrets.SetSecret(ss.SetSecretRequest(name="five", value=b"v"))
    assert (refused.value.code(), error_reason(refused.value)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOO_MANY_SECRETS",
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await secrets.DeleteSecret(ss.DeleteSecretRequest(name="never-set"))
    assert (refused.value.code(), error_reason(refused.value)) == (grpc.StatusCode.NOT_FOUND, "SECRET_NOT_FOUND")
    names = [s.name for s in (await secrets.ListSecrets(ss.ListSecretsRequest())).secrets]
    assert names == ["four", "hf_token", "three", "two"]  # the refused calls changed nothing


async def test_the_cli_sets_lists_and_deletes_secrets_without_showing_values(platform, tmp_path, monkeypatch):
    controller, *_ = platform
    monkeypatch.setenv("SLIPWAY_CONTROLLER", controller.address)
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None):
        return asyncio.to_thread(runner.invoke, cli, list(args), input=stdin, catch_exceptions=False)

    value_file = tmp_path / "token.txt"
    value_file.write_text("from-a-file")
    assert (await run("secrets", "set", "api_key", stdin=f"{VALUE}\n")).exit_code == 0
    assert (await run("secrets", "set", "file_key", "--from-file", str(value_file))).exit_code == 0
    listed = await run("secrets", "list")
    assert listed.exit_code == 0 and "api_key" in listed.output and "file_key" in listed.output
    assert VALUE not in listed.output and "from-a-file" not in listed.output
    (oversized := tmp_path / "big.txt").write_bytes(b"x" * (64 * 1024 + 1))
    refused = await run("secrets", "set", "big", "--from-file", str(oversized))
    assert refused.exit_code != 0 and "larger than 65536 bytes" in refused.output
    assert (await run("secrets", "delete", "api_key", "--yes")).exit_code == 0
    refused = await run("secrets", "delete", "api_key", "--yes")
    assert refused.exit_code != 0 and "SECRET_NOT_FOUND" in refused.output
    assert "api_key" not in (await run("secrets", "list")).output


async def test_a_replica_gets_only_the_secrets_its_package_declares_with_truss_semantics(platform):
    controller, gateway, api, secrets, session = platform
    assert "SLIPWAY_SECRET_FROM_ENV" not in os.environ  # taken out of the controller's environment
    await secrets.SetSecret(ss.SetSecretRequest(name="mine", value=VALUE.encode()))
    await secrets.SetSecret(ss.SetSecretRequest(name="overridden", value=b"platform-value"))
    await secrets.SetSecret(ss.SetSecretRequest(name="not_declared", value=b"someone-elses"))
    config = "secrets:\n  mine: null\n  overridden: config-default\n  defaulted: config-default\n"
    config += "  missing: null\n  from_env: null\n"
    pushed = await api.push(api.package("reader", source=READER_MODEL, extra_config=config))
    # Only the declared secret that has neither a value nor a default is warned about.
    assert [w for w in pushed.warnings if "secret" in w] == [
        "secret 'missing' is not set (slipway secrets set missing): the model's secrets['missing'] "
        "raises SecretNotFound"
    ]
    await api.wait_state(pushed.deployment.id, ACTIVE)
    model_id = pushed.model.id

    status, answer = await predict(session, gateway, model_id, '["mine", "overridden", "defaulted", "from_env"]')
    assert status == 200, answer
    assert answer == {
        "mine": VALUE,
        "overridden": "platform-value",  # a platform secret overrides the config.yaml default
        "defaulted": "config-default",
        "from_env": "operator-value",  # the SLIPWAY_SECRET_* fallback
    }
    status, answer = await predict(session, gateway, model_id, '["missing"]')
    assert status == 500 and "Secret 'missing' not found" in answer["error"]["message"], answer
    status, answer = await predict(session, gateway, model_id, '["not_declared"]')
    assert status == 500 and "Secret 'not_declared' not specified in the config" in answer["error"]["message"]
    assert "someone-elses" not in answer["error"]["message"]
    status, answer = await predict(session, gateway, model_id, '"environ"')
    assert (status, answer) == (200, [])  # the replica took its secrets out of its environment too
