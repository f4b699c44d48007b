"""The fork server lives as long as its controller, and tells it how each replica ended."""

from __future__ import annotations

import pathlib
import signal

import grpc
import test_restart
from conftest import Api, wait_until
from test_lifecycle import pid_alive
from test_restart import ControllerProcess, free_port, replica_pids

from replica.forkserver import SERVER_NAME
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

data_dir = test_restart.data_dir  # the fixture: a data directory whose processes are killed afterwards

DIES_IN_LOAD = """
import os
import signal


class Model:
    def load(self):
        {how}

    def predict(self, model_input):
        return model_input
"""


def fork_server_pids(directory: pathlib.Path) -> set[int]:
    return {pid for pid in replica_pids(directory, include_fork_servers=True) if comm(pid) == SERVER_NAME}


def comm(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


async def test_fork_server_exits_when_its_controller_is_killed_and_replicas_live_on(data_dir, tmp_path):
    controller = ControllerProcess(data_dir, free_port())
    try:
        await controller.ready()
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            pushed = await api.push(api.package("lifeline"))
            running = await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
        fork_servers = await wait_until(lambda: fork_server_pids(data_dir), 10, "the fork server")
        controller.process.send_signal(signal.SIGKILL)
        controller.process.wait(10)
    finally:
        controller.process.kill()

    await wait_until(lambda: not any(pid_alive(pid) for pid in fork_servers), 10, "the fork server to exit")
    # Replicas are not tied to it: the next controller on this data directory adopts them.
    assert pid_alive(running.replicas[0].pid)


async def test_a_replica_that_dies_in_load_reports_its_exit_code_or_signal(api: Api):
    for name, how, expected in [
        ("exits", "os._exit(7)", "replica exited with code 7 before the model loaded"),
        ("oom", "os.kill(os.getpid(), signal.SIGKILL)", "replica was killed by signal SIGKILL before the model loaded"),
    ]:
        package = api.package(name, source=DIES_IN_LOAD.format(how=how))
        pushed = await api.push(package, ds.PUSH_TARGET_PUBLISHED)
        failed = await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_DEPLOY_FAILED)
        assert failed.status_message.startswith(expected), failed.status_message
