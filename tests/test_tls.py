"""TLS end to end with a certificate the tests generate: the controller's gRPC port, the
gateway's gRPC and HTTP ports, the CLI and SDK with --tls-ca, a gateway following its
controller over TLS, and the refusals (no CA, another CA, plaintext to a TLS port, TLS to a
plaintext port). One platform serves the whole module."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
import pytest_asyncio
from click.testing import CliRunner, Result
from conftest import ECHO_MODEL, controller_settings, start_gateway, stop_or_explain, wait_until, write_package
from pki import Pki, generate

from controller.server import Controller
from gateway.server import Gateway
from slipway.cli import cli
from slipway.client import SlipwayClient
from slipway.tls import ServerTls
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import model_service_pb2_grpc as ms_grpc

# The tests through a gateway run on both data planes (tests/conftest.py); those of the
# controller, or of a gateway's control side (following, warnings), take `sealed` and run once.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.both_data_planes]


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return generate(tmp_path_factory.mktemp("pki"))


@dataclass
class Sealed:
    """A controller serving TLS, with one model pushed."""

    controller: Controller
    model_id: str
    pki: Pki


@dataclass
class Platform(Sealed):
    """... and a gateway serving TLS on a data plane."""

    gateway: Gateway

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"


async def slipway(*args: str, env: dict[str, str] | None = None) -> Result:
    """The CLI in a worker thread, so that the in-process servers keep serving."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sealed(pki, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    tls = ServerTls.load(pki.cert, pki.key)
    controller = await Controller.start(controller_settings(tmp / "data", tls=tls))
    package = write_package(tmp / "pkg", "sealed", ECHO_MODEL.format(tag="tls"))
    pushed = await slipway("--controller", controller.address, "--tls-ca", str(pki.ca), "push", str(package))
    assert pushed.exit_code == 0, pushed.output
    with SlipwayClient(controller.address, ca_file=pki.ca) as client:
        model_id = (await asyncio.to_thread(client.get_model, "sealed")).id
    yield Sealed(controller, model_id, pki)
    await stop_or_explain(controller.stop(), "controller")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def platform(sealed, data_plane):
    tls = ServerTls.load(sealed.pki.cert, sealed.pki.key)
    gateway = await start_gateway(sealed.controller, tls=tls, controller_ca_file=sealed.pki.ca, data_plane=data_plane)
    yield Platform(sealed.controller, sealed.model_id, sealed.pki, gateway)
    await stop_or_explain(gateway.stop(), "gateway")


async def test_the_cli_manages_the_platform_over_tls_with_the_ca(sealed):
    listed = await slipway(
        "--controller", sealed.controller.address, "--tls-ca", str(sealed.pki.ca), "models", "list", "-o", "json"
    )
    assert listed.exit_code == 0, listed.output
    assert [model["name"] for model in json.loads(listed.output)] == ["sealed"]
    # The CA from the environment, and a certificate that names localhost as well as 127.0.0.1.
    by_name = await slipway(
        "--controller",
        f"localhost:{sealed.controller.port}",
        "models",
        "get",
        "sealed",
        env={"SLIPWAY_TLS_CA": str(sealed.pki.ca)},
    )
    assert by_name.exit_code == 0, by_name.output
    assert sealed.model_id in by_name.output


async def test_predict_over_grpc_through_a_gateway_following_its_controller_over_tls(platform):
    assert platform.gateway.follower.connected
    result = await slipway(
        "--gateway",
        platform.gateway_address,
        "--tls-ca",
        str(platform.pki.ca),
        "predict",
        "sealed",
        '{"text": "hi"}',
        "--deployment",
        "development",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"tag": "tls", "input": {"text": "hi"}}


async def test_predict_over_https_with_the_ca(platform):
    context = ssl.create_default_context(cafile=platform.pki.ca)
    url = f"https://localhost:{platform.gateway.http_port}/model/{platform.model_id}/development/predict"
    async with aiohttp.ClientSession() as session, session.post(url, json={"text": "hi"}, ssl=context) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"tag": "tls", "input": {"text": "hi"}}


async def test_the_controllers_connect_api_serves_https_with_the_ca(sealed):
    assert sealed.controller.http_url.startswith("https://")
    context = ssl.create_default_context(cafile=sealed.pki.ca)
    url = f"{sealed.controller.http_url}/slipway.v1.ModelService/GetModel"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"modelId": "sealed"}, ssl=context) as response,
    ):
        assert response.status == 200, await response.text()
        assert (await response.json())["model"]["id"] == sealed.model_id


async def test_a_client_without_the_ca_gets_one_clear_line(sealed):
    address = sealed.controller.address
    plaintext = await slipway("--controller", address, "models", "list")
    assert plaintext.exit_code == 1
    assert plaintext.output.startswith("Error: UNAVAILABLE"), plaintext.output
    assert "pass its CA certificate with --tls-ca" in plaintext.output
    other_ca = await slipway("--controller", address, "--tls-ca", str(sealed.pki.other_ca), "models", "list")
    assert other_ca.exit_code == 1
    assert "not signed by the CA in --tls-ca" in other_ca.output
    for result in (plaintext, other_ca):
        assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    with pytest.raises(grpc.RpcError) as refused:
        with SlipwayClient(address, ca_file=sealed.pki.other_ca) as client:
            await asyncio.to_thread(client.list_models)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_https_without_the_ca_is_refused(platform):
    url = f"https://127.0.0.1:{platform.gateway.http_port}/model/{platform.model_id}/development/predict"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(url, json={"text": "hi"})


async def test_plaintext_to_a_tls_port_fails(platform):
    for port in (platform.controller.port, platform.gateway.grpc_port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ms_grpc.ModelServiceStub(channel).ListModels(ms.ListModelsRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    url = f"http://127.0.0.1:{platform.gateway.http_port}/model/{platform.model_id}/development/predict"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.post(url, json={"text": "hi"})


async def test_tls_to_a_plaintext_gateway_says_it_serves_no_tls(platform):
    plaintext = await start_gateway(
        platform.controller, controller_ca_file=platform.pki.ca, data_plane=platform.gateway.settings.data_plane
    )
    try:
        result = await slipway(
            "--gateway", f"127.0.0.1:{plaintext.grpc_port}", "--tls-ca", str(platform.pki.ca), "predict", "sealed", "{}"
        )
    finally:
        await stop_or_explain(plaintext.stop(), "plaintext gateway")
    assert result.exit_code == 1
    assert "the server does not serve TLS" in result.output, result.output


async def test_a_gateway_without_the_controllers_ca_logs_why_it_has_no_routes(sealed, caplog):
    from gateway.server import GatewaySettings

    caplog.set_level(logging.WARNING, "slipway.gateway.routes")
    gateway = await Gateway.start(
        GatewaySettings(
            controller_address=sealed.controller.address,
            internal_token=sealed.controller.internal_token,
            grpc_port=0,
            http_port=0,
            shutdown_grace_seconds=1,
        )
    )
    try:
        record = await wait_until(
            lambda: next(
                (r for r in caplog.records if r.getMessage() == "cannot follow the controller's routes"), None
            ),
            10,
            "the follower's warning",
        )
    finally:
        await stop_or_explain(gateway.stop(), "gateway")
    assert not gateway.follower.synced.is_set()
    assert record.fields["code"] == "UNAVAILABLE"


async def test_listening_beyond_loopback_without_tls_is_warned(sealed, tmp_path, capfd, caplog):
    from gateway.server import GatewaySettings

    caplog.set_level(logging.WARNING, "slipway.tls")
    exposed = await Controller.start(controller_settings(tmp_path / "data", host="0.0.0.0", fork_replicas=False))
    await stop_or_explain(exposed.stop(), "exposed controller")
    for tls in (None, ServerTls.load(sealed.pki.cert, sealed.pki.key)):
        gateway = await Gateway.start(
            GatewaySettings(
                controller_address=sealed.controller.address,
                internal_token=sealed.controller.internal_token,
                host="0.0.0.0",
                grpc_port=0,
                http_port=0,
                tls=tls,
                controller_ca_file=sealed.pki.ca,
            )
        )
        await stop_or_explain(gateway.stop(), "exposed gateway")
    warned = [r.getMessage() for r in caplog.records if "WITHOUT TLS" in r.getMessage()]
    assert [message.split()[0:2] for message in warned] == [["the", "controller"], ["the", "gateway"]], warned
    stderr = capfd.readouterr().err
    assert "WARNING: the controller listens on 0.0.0.0 WITHOUT TLS" in stderr
    assert stderr.count("WITHOUT TLS") == 2  # the gateway with TLS was not warned about


async def test_settings_never_show_the_private_key(pki):
    tls = ServerTls.load(pki.cert, pki.key)
    assert "PRIVATE KEY" in pki.key.read_text()
    assert "PRIVATE" not in repr(controller_settings(pki.key.parent, tls=tls))
    assert str(pki.key) in repr(tls)  # which file, though


async def test_bad_tls_options_are_refused_before_anything_starts(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    half = await slipway("controller", "--data-dir", str(tmp_path / "data"), "--tls-cert", str(pki.cert))
    assert half.exit_code == 2
    assert "--tls-cert and --tls-key go together" in half.output
    wrong_key = await slipway("gateway", "--tls-cert", str(pki.cert), "--tls-key", str(garbage))
    assert wrong_key.exit_code == 2
    assert f"cannot serve TLS with certificate {pki.cert} and key {garbage}" in wrong_key.output
    bad_ca = await slipway("--tls-ca", str(garbage), "models", "list")
    assert bad_ca.exit_code == 2
    assert f"cannot use {garbage} as a CA certificate" in bad_ca.output
    assert not (tmp_path / "data").exists()


async def test_slipway_up_serves_tls_with_a_self_signed_certificate_and_says_how_to_reach_it(pki, tmp_path):
    """Without --tls-ca, `up` verifies its own controller with the (self-signed) certificate,
    and on every interface it dials (and tells clients to dial) 127.0.0.1, a name the
    certificate holds."""
    up = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "slipway", "up", "--host", "0.0.0.0"),
        *("--port", "0", "--gateway-port", "0", "--http-port", "0"),
        *("--tls-cert", str(pki.self_signed_cert), "--tls-key", str(pki.self_signed_key)),
        *("--data-dir", str(tmp_path / "data"), "--no-fork-replicas"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert up.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("Serving"):
            line = await asyncio.wait_for(up.stdout.readline(), 30)
            assert line, f"slipway up exited: {lines}"
            lines.append(line.decode().strip())
        assert f"export SLIPWAY_TLS_CA={pki.self_signed_cert}" in lines, lines
        assert any("(gRPC) and https://127.0.0.1:" in line for line in lines), lines
        controller = next(line.split("=", 1)[1] for line in lines if "SLIPWAY_CONTROLLER=" in line)
        gateway = next(line.split("=", 1)[1] for line in lines if "SLIPWAY_GATEWAY=" in line)
        # --data-dir: where the CLI finds the admin key the first start wrote.
        key = ("--data-dir", str(tmp_path / "data"))
        listed = await slipway(
            "--controller", controller, *key, "--tls-ca", str(pki.self_signed_cert), "models", "list"
        )
        assert listed.output == "No models.\n"
        # The real command, without the CA: one line on stderr, none of grpc core's own.
        refused = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "slipway", "--controller", controller, "models", "list"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(refused.communicate(), 30)
        assert refused.returncode == 1 and not out
        assert err.decode().splitlines() == [err.decode().strip()] and err.startswith(b"Error: UNAVAILABLE"), err

        async def gateway_answers_from_its_routes() -> str:
            result = await slipway(
                "--gateway", gateway, *key, "--tls-ca", str(pki.self_signed_cert), "predict", "nope", "{}"
            )
            return "ROUTES_UNAVAILABLE" not in result.output and result.output

        # The gateway followed its controller over TLS: it knows there is no such model.
        assert "NOT_FOUND" in await wait_until(gateway_answers_from_its_routes, 10, "the gateway's route table")
    finally:
        up.send_signal(signal.SIGTERM)
        await asyncio.wait_for(up.wait(), 30)
    assert up.returncode == 0


async def test_a_client_that_never_completes_its_tls_handshake_is_closed_like_an_idle_one(platform):
    from gateway.http_limits import HttpLimits

    tls = ServerTls.load(platform.pki.cert, platform.pki.key)
    limits = HttpLimits(idle_timeout_seconds=0.3)
    plane = platform.gateway.settings.data_plane
    gateway = await start_gateway(
        platform.controller, tls=tls, controller_ca_file=platform.pki.ca, http_limits=limits, data_plane=plane
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without a byte (asyncio's default: 60 s)
        writer.close()
    finally:
        await stop_or_explain(gateway.stop(), "gateway")


async def _json_log_line(process: asyncio.subprocess.Process, message: str) -> dict:
    """Read the process's JSON log lines on stderr until the one with `message`."""
    assert process.stderr is not None
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        assert line, f"the process exited before logging {message!r}"
        if line.startswith(b"{") and json.loads(line)["msg"] == message:
            return json.loads(line)


async def test_the_controller_and_gateway_commands_take_the_tls_flags(pki, tmp_path):
    """`slipway controller` and `slipway gateway` as an operator runs them: the gateway
    verifies its controller with the root --tls-ca and serves HTTPS."""
    slipway_command = (sys.executable, "-m", "slipway", "--tls-ca", str(pki.ca))
    tls_flags = ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    pipes = {"stdout": asyncio.subprocess.DEVNULL, "stderr": asyncio.subprocess.PIPE}
    controller = await asyncio.create_subprocess_exec(
        *slipway_command,
        "controller",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--no-fork-replicas",
        *tls_flags,
        **pipes,
    )
    processes = [controller]
    try:
        address = (await _json_log_line(controller, "controller listening"))["address"]
        gateway = await asyncio.create_subprocess_exec(
            *slipway_command,
            "--controller",
            address,
            "gateway",
            "--gateway-port",
            "0",
            "--http-port",
            "0",
            "--internal-token-file",
            str(tmp_path / "data" / "internal.token"),
            *tls_flags,
            **pipes,
        )
        processes.append(gateway)
        http = (await _json_log_line(gateway, "gateway listening"))["http"]
        await _json_log_line(gateway, "following routes")
        admin_key = (tmp_path / "data" / "admin.key").read_text().strip()
        async with aiohttp.ClientSession(headers={"Authorization": f"Api-Key {admin_key}"}) as session:
            url = f"https://{http}/model/nope/production/predict"
            async with session.post(url, json={}, ssl=ssl.create_default_context(cafile=pki.ca)) as response:
                assert response.status == 404
                assert (await response.json())["error"]["reason"] == "MODEL_NOT_FOUND"
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
    assert [process.returncode for process in processes] == [0, 0]
