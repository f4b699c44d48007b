"""Gateways and the CLI following a list of controllers: two controller processes, the
first refusing connections or killed."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import grpc
from conftest import Api, wait_until
from test_restart import ControllerProcess, free_port, replica_pids

from gateway.server import Gateway, GatewaySettings
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc


def slipway(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slipway", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def model_names(listed: subprocess.CompletedProcess) -> set[str]:
    assert listed.returncode == 0, listed.stderr
    return {model["name"] for model in json.loads(listed.stdout)}


async def test_gateways_and_the_cli_fail_over_to_the_next_controller(tmp_path):
    """Two controller processes (separate state here: the test is about who answers), one
    internal token, as controllers sharing a database have."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for directory in (first_dir, second_dir):
        directory.mkdir()
    first = ControllerProcess(first_dir, free_port())
    second = None
    gateway = None
    refusing = socket.socket()  # bound, never listening: connections are refused
    refusing.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{refusing.getsockname()[1]}"
    try:
        await first.ready()
        (second_dir / "internal.token").write_text((first_dir / "internal.token").read_text())
        second = ControllerProcess(second_dir, free_port())
        await second.ready()
        both = f"{first.address},{second.address}"

        # Only the second of two is up: the CLI answers from it.
        assert (
            model_names(
                slipway("--controller", f"{dead},{second.address}", "models", "list", "--output", "json", cwd=tmp_path)
            )
            == set()
        )

        async with grpc.aio.insecure_channel(first.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            pushed = await api.push(api.package("on-first"), target=ds.PUSH_TARGET_PRODUCTION)
            await api.wait_production(pushed.model.id, pushed.deployment.id)
        assert model_names(slipway("--controller", both, "models", "list", "--output", "json", cwd=tmp_path)) == {
            "on-first"
        }
        gateway = await Gateway.start(
            GatewaySettings(
                controller_address=f"{dead},{both}",
                internal_token_file=first_dir / "internal.token",
                grpc_port=0,
                http_port=0,
                replica_wait_seconds=10,
                load_report_seconds=0.2,
                require_api_keys=False,
            )
        )
        await wait_until(lambda: "on-first" in gateway.follower.index.models_by_name, what="routes of the first")
        assert gateway.follower.controller_address == first.address

        first.process.kill()
        first.process.wait(10)
        # The CLI and the gateway's route watch move to the second.
        assert model_names(slipway("--controller", both, "models", "list", "--output", "json", cwd=tmp_path)) == set()
        await wait_until(
            lambda: gateway.follower.connected and gateway.follower.controller_address == second.address,
            what="the gateway to follow the second controller",
        )
        async with grpc.aio.insecure_channel(second.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            pushed = await api.push(api.package("on-second"), target=ds.PUSH_TARGET_PRODUCTION)
            await api.wait_production(pushed.model.id, pushed.deployment.id)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            stub = inf_grpc.InferenceServiceStub(channel)
            request = inf.PredictRequest(target=inf.Target(model_id="on-second"), payload=b'"hi"')
            answer = await stub.Predict(request, timeout=30)
        assert json.loads(answer.payload)["input"] == "hi"
        assert model_names(slipway("--controller", both, "models", "list", "--output", "json", cwd=tmp_path)) == {
            "on-second"
        }
    finally:
        refusing.close()
        if gateway is not None:
            await gateway.stop()
        for controller in (first, second):
            if controller is not None:
                controller.process.kill()
                controller.process.wait(10)
        for directory in (first_dir, second_dir):
            for pid in replica_pids(directory, include_fork_servers=True):
                os.kill(pid, signal.SIGKILL)


async def test_a_gateway_leaves_a_paused_controller_for_the_next(tmp_path):
    """SIGSTOP: the connection stays open and answers nothing. The route stream's pings
    (every 10 s, 5 s to answer) find out; the gateway then follows the next controller."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for directory in (first_dir, second_dir):
        directory.mkdir()
    first = ControllerProcess(first_dir, free_port())
    second = gateway = None
    try:
        await first.ready()
        (second_dir / "internal.token").write_text((first_dir / "internal.token").read_text())
        second = ControllerProcess(second_dir, free_port())
        await second.ready()
        gateway = await Gateway.start(
            GatewaySettings(
                controller_address=f"{first.address},{second.address}",
                internal_token_file=first_dir / "internal.token",
                grpc_port=0,
                http_port=0,
                require_api_keys=False,
            )
        )
        await wait_until(lambda: gateway.follower.connected, what="following the first")
        assert gateway.follower.controller_address == first.address
        first.process.send_signal(signal.SIGSTOP)
        await wait_until(
            lambda: gateway.follower.connected and gateway.follower.controller_address == second.address,
            timeout=40,  # 15 s by the keepalive settings; grpc's own ping timeout would be 60 s more
            what="the gateway to follow the second controller",
        )
    finally:
        if gateway is not None:
            await gateway.stop()
        for controller in (first, second):
            if controller is not None:
                controller.process.send_signal(signal.SIGCONT)
                controller.process.kill()
                controller.process.wait(10)
