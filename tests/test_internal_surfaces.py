"""Internal surfaces are not user surfaces (issue 10, item 4), attacked as the issue's Why did.

RouteService takes only the controller's internal token; a replica takes only its own
token; Reload exists only on development replicas and loads only stored packages. Each
refusal changes nothing. Through a real controller, gateway and replica processes.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
from collections.abc import Awaitable

import grpc
import pytest
from click.testing import CliRunner
from conftest import ECHO_MODEL, Api, error_reason, routing_metadata, wait_until, write_package
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.server import Controller
from slipway import cli
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import replica_service_pb2_grpc as rs_grpc
from slipway.v1 import resources_pb2 as r
from slipway.v1 import route_service_pb2 as rt
from slipway.v1 import route_service_pb2_grpc as rt_grpc

# What the gateway forwards with, and to, runs on both data planes (tests/conftest.py).
pytestmark = pytest.mark.both_data_planes

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
# The wire contract (not imported: these tests must also run against code that has none).
INTERNAL_HEADER = "x-slipway-internal-token"
REPLICA_HEADER = "x-slipway-replica-token"
USER_KEY = ("authorization", "Api-Key sk-anything-a-user-holds")

PROBE_MODEL = """
import os

class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        pass

    def predict(self, model_input):
        environ = open("/proc/self/environ", "rb").read().decode(errors="replace")
        return {"env": sorted(k for k in os.environ if "TOKEN" in k), "environ_has_token": "TOKEN=" in environ}
"""


def token_of(controller: Controller, replica_id: str) -> str:
    handle = next(h for h in controller.reconciler.replicas.values() if h.id == replica_id)
    return getattr(handle, "token", "")


async def ready_replica(api: Api, deployment_id: str) -> r.Replica:
    deployment = await api.wait_state(deployment_id, ACTIVE)
    return next(rep for rep in deployment.replicas if rep.state == r.REPLICA_STATE_READY)


async def refused(call: Awaitable, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED) -> str:
    """The ErrorInfo reason of a call that must fail with `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value
    return error_reason(caught.value)


async def test_route_service_takes_only_the_internal_token(controller: Controller, api: Api, tmp_path):
    pushed = await api.push(api.package("routed"), target=ds.PUSH_TARGET_PUBLISHED)
    deployment_id = pushed.deployment.id
    await api.wait_state(deployment_id, ACTIVE)
    forged = rt.ReportLoadRequest(
        gateway_id="attacker", loads=[rt.DeploymentLoad(deployment_id=deployment_id, average_concurrency=1e6)]
    )
    wrong = ((INTERNAL_HEADER, "guessed"),)
    async with grpc.aio.insecure_channel(controller.address) as channel:
        stub = rt_grpc.RouteServiceStub(channel)

        async def watch(metadata):
            async for _ in stub.WatchRoutes(rt.WatchRoutesRequest(gateway_id="attacker"), metadata=metadata):
                break

        calls = {
            "WatchRoutes": watch,
            "ReportLoad": lambda metadata: stub.ReportLoad(forged, metadata=metadata),
            "AckRoutes": lambda metadata: stub.AckRoutes(
                rt.AckRoutesRequest(gateway_id="attacker", version=1), metadata=metadata
            ),
            "WakeRoute": lambda metadata: stub.WakeRoute(
                rt.WakeRouteRequest(gateway_id="attacker", deployment_id=deployment_id), metadata=metadata
            ),
        }
        for name, call in calls.items():
            assert await refused(call(())) == "INTERNAL_TOKEN_MISSING", name
            assert await refused(call((USER_KEY,))) == "INTERNAL_TOKEN_MISSING", name
            assert await refused(call(wrong)) == "INTERNAL_TOKEN_INVALID", name
        # The forged load report reached nothing: the autoscaler's input is untouched.
        assert controller.load.observe(deployment_id) == (0.0, 0)

        # Health checking and reflection stay open for probes.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        # The gateway's credential works (and is what the refusals above lacked).
        await stub.ReportLoad(forged, metadata=((INTERNAL_HEADER, controller.internal_token),))
        assert controller.load.observe(deployment_id)[0] == 1e6

    # Settings get logged: the token never shows in their repr.
    from gateway.server import GatewaySettings

    assert controller.internal_token not in repr(GatewaySettings(internal_token=controller.internal_token))
    token_file = controller.settings.data_dir / "internal.token"
    assert token_file.read_text() == controller.internal_token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(controller.internal_token) >= 32


async def test_a_restarted_controller_keeps_its_internal_token(tmp_path):
    from conftest import controller_settings

    first = await Controller.start(controller_settings(tmp_path / "data"))
    token = first.internal_token
    await first.stop()
    second = await Controller.start(controller_settings(tmp_path / "data"))
    try:
        assert second.internal_token == token, "a standalone gateway's copy of the token would stop working"
    finally:
        await second.stop()


def test_a_standalone_gateway_without_the_token_file_says_so(tmp_path):
    missing = tmp_path / "nowhere" / "internal.token"
    result = CliRunner().invoke(cli.cli, ["gateway", "--internal-token-file", str(missing)])
    assert result.exit_code == 1, result.output
    assert f"cannot read the internal token file {missing}" in result.output


async def test_replicas_take_only_their_own_token(controller: Controller, api: Api, gateway):
    first = await api.push(api.package("first"), target=ds.PUSH_TARGET_PUBLISHED)
    second = await api.push(api.package("second", source=PROBE_MODEL), target=ds.PUSH_TARGET_PUBLISHED)
    replica = await ready_replica(api, first.deployment.id)
    other = await ready_replica(api, second.deployment.id)
    own = ((REPLICA_HEADER, token_of(controller, replica.id)),)
    stolen = ((REPLICA_HEADER, token_of(controller, other.id)),)
    invoke = rs.InvokeRequest(payload=b'"hi"', content_type="application/json")
    stream = rs.InvokeStreamRequest(payload=b'"hi"', content_type="application/json")
    async with grpc.aio.insecure_channel(replica.address) as channel:
        stub = rs_grpc.ReplicaServiceStub(channel)

        async def invoke_stream(metadata):
            async for _ in stub.InvokeStream(stream, metadata=metadata):
                pass

        calls = {
            "Invoke": lambda metadata: stub.Invoke(invoke, metadata=metadata),
            "InvokeStream": invoke_stream,
            "Reload": lambda metadata: stub.Reload(
                rs.ReloadRequest(package_digest=first.deployment.package_digest), metadata=metadata
            ),
            "GetMetrics": lambda metadata: stub.GetMetrics(rs.GetMetricsRequest(), metadata=metadata),
        }
        for name, call in calls.items():
            assert await refused(call(())) == "REPLICA_TOKEN_MISSING", name
            assert await refused(call((USER_KEY,))) == "REPLICA_TOKEN_MISSING", name
            internal = ((REPLICA_HEADER, controller.internal_token),)
            assert await refused(call(internal)) == "REPLICA_TOKEN_INVALID", name
            # Another model's replica (which knows its own token) cannot call this one.
            assert await refused(call(stolen)) == "REPLICA_TOKEN_INVALID", name

        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        answer = await stub.Invoke(invoke, metadata=own, timeout=10)

    # Each refusal is a structured line in the replica's log, without the token presented.
    log_path = controller.settings.data_dir / "logs" / f"{replica.id}.log"

    def refusals() -> list[dict]:
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line["event"] == "call_refused"]

    logged = await wait_until(lambda: len(refusals()) == 16 and refusals(), what="16 refusals in the replica's log")
    assert {line["reason"] for line in logged} == {"REPLICA_TOKEN_MISSING", "REPLICA_TOKEN_INVALID"}
    assert token_of(controller, other.id) not in log_path.read_text()
    assert json.loads(answer.payload)["input"] == "hi"

    # The gateway forwards with each endpoint's token from the (authenticated) route table.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as gw:
        target = inf.Target(deployment_id=second.deployment.id)
        probe = await inf_grpc.InferenceServiceStub(gw).Predict(
            inf.PredictRequest(target=target, payload=b"{}"), timeout=10, metadata=routing_metadata(target)
        )
    # The model sees no token: not in its environment, nor its process's initial one, nor its command line.
    assert json.loads(probe.payload) == {"env": [], "environ_has_token": False}
    cmdline = pathlib.Path(f"/proc/{other.pid}/cmdline").read_bytes()
    assert token_of(controller, other.id).encode() not in cmdline
    token_file = controller.settings.data_dir / "run" / f"{other.id}.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


async def test_a_replica_started_as_a_new_process_gets_its_token_through_a_pipe(tmp_path):
    """Without the fork server, a new interpreter's environment is readable in /proc/PID/environ
    (by its user): the token must not be there, nor on its command line."""
    from conftest import controller_settings

    controller = await Controller.start(controller_settings(tmp_path / "data", fork_replicas=False))
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, *_stubs(channel), tmp_path)
            pushed = await api.push(api.package("exec", source=PROBE_MODEL))
            replica = await ready_replica(api, pushed.deployment.id)
        token = token_of(controller, replica.id)
        assert token.encode() not in pathlib.Path(f"/proc/{replica.pid}/environ").read_bytes()
        assert token.encode() not in pathlib.Path(f"/proc/{replica.pid}/cmdline").read_bytes()
        async with grpc.aio.insecure_channel(replica.address) as channel:
            stub = rs_grpc.ReplicaServiceStub(channel)
            request = rs.InvokeRequest(payload=b"{}", content_type="application/json")
            assert await refused(stub.Invoke(request)) == "REPLICA_TOKEN_MISSING"
            answer = await stub.Invoke(request, metadata=((REPLICA_HEADER, token),), timeout=10)
        assert json.loads(answer.payload) == {"env": [], "environ_has_token": False}
    finally:
        await controller.stop()


def _stubs(channel: grpc.aio.Channel):
    from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
    from slipway.v1 import model_service_pb2_grpc as ms_grpc

    return ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel)


async def test_reload_only_on_development_and_only_stored_packages(controller: Controller, api: Api, gateway, tmp_path):
    production = await api.push(api.package("victim", tag="genuine"), target=ds.PUSH_TARGET_PRODUCTION)
    development = await api.push(api.package("victim", tag="dev"))
    prod_replica = await ready_replica(api, production.deployment.id)
    dev_replica = await ready_replica(api, development.deployment.id)
    attack = write_package(tmp_path / "attacker", "victim", ECHO_MODEL.format(tag="attacker"))

    async def reload(replica: r.Replica, request: rs.ReloadRequest):
        async with grpc.aio.insecure_channel(replica.address) as channel:
            return await rs_grpc.ReplicaServiceStub(channel).Reload(
                request, metadata=((REPLICA_HEADER, token_of(controller, replica.id)),), timeout=30
            )

    # Even with the replica's own token, a production replica does not live-reload at all:
    # not the attacker's directory, not a stored package.
    precondition = grpc.StatusCode.FAILED_PRECONDITION
    by_path = rs.ReloadRequest(package_dir=str(attack))
    assert await refused(reload(prod_replica, by_path), precondition) == "RELOAD_NOT_DEVELOPMENT"
    stored_digest = rs.ReloadRequest(package_digest=development.deployment.package_digest)
    assert await refused(reload(prod_replica, stored_digest), precondition) == "RELOAD_NOT_DEVELOPMENT"

    # A development replica loads a stored package by digest, never a path.
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert await refused(reload(dev_replica, by_path), invalid) == "RELOAD_PATH_REFUSED"
    for digest in ("../../../" + str(attack), "ABC", ""):
        escape = rs.ReloadRequest(package_digest=digest)
        assert await refused(reload(dev_replica, escape), invalid) == "RELOAD_DIGEST_INVALID", digest
    unknown = rs.ReloadRequest(package_digest="0" * 64)
    assert await refused(reload(dev_replica, unknown), grpc.StatusCode.NOT_FOUND) == "RELOAD_PACKAGE_NOT_FOUND"

    # Nothing changed: production by model ID answers its own model on every request.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as gw:
        stub = inf_grpc.InferenceServiceStub(gw)
        for _ in range(4):
            target = inf.Target(model_id=production.model.id)
            answer = await stub.Predict(
                inf.PredictRequest(target=target, payload=b"1"), timeout=10, metadata=routing_metadata(target)
            )
            assert json.loads(answer.payload)["tag"] == "genuine"
        target = inf.Target(deployment_id=development.deployment.id)
        dev_answer = await stub.Predict(
            inf.PredictRequest(target=target, payload=b"1"), timeout=10, metadata=routing_metadata(target)
        )
        assert json.loads(dev_answer.payload)["tag"] == "dev"

    # The controller's own Reload (live reload of development) still works, by digest.
    stored = await reload(dev_replica, rs.ReloadRequest(package_digest=development.deployment.package_digest))
    assert stored.ok


def test_a_replica_refuses_to_listen_on_every_interface(tmp_path):
    package = write_package(tmp_path / "pkg", "wide", ECHO_MODEL.format(tag="x"))
    for host in ("0.0.0.0", "::"):
        result = subprocess.run(
            [sys.executable, "-m", "replica", "--package", str(package), "--state-file", str(tmp_path / "s.json")]
            + ["--host", host],
            env={**os.environ, "SLIPWAY_REPLICA_TOKEN": "t"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert "listens on every interface" in result.stderr


async def test_replicas_the_controller_starts_listen_on_loopback(api: Api):
    pushed = await api.push(api.package("local"))
    replica = await ready_replica(api, pushed.deployment.id)
    assert replica.address.startswith("127.0.0.1:")
    port = int(replica.address.rsplit(":", 1)[1])
    listening = await wait_until(lambda: _listening_addresses(port), what="the replica's socket")
    assert listening <= LOOPBACK, f"bound to {listening} (hex, as /proc/net/tcp writes them), not only loopback"


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found
