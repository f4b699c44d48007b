"""The controller as a real process: SIGKILL it and restart it; nothing accepted is
lost, running replicas are adopted, and no replica process is left orphaned."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys

import grpc
import pytest
from conftest import DATA_DIRS, Api, wait_until
from test_lifecycle import pid_alive

from replica.forkserver import SERVER_NAME
from slipway.internal_auth import REPLICA_TOKEN_ENV
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

# The restart test runs on SQLite and on PostgreSQL (`slipway controller --database`).
pytestmark = pytest.mark.both_backends
ACTIVE = r.DEPLOYMENT_STATE_ACTIVE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_pids(data_dir: pathlib.Path, include_fork_servers: bool = False) -> set[int]:
    """Live replica processes (and optionally fork servers) that belong to this data directory."""
    marker = str(data_dir / "run")
    pids = set()
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().decode(errors="replace")
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name == SERVER_NAME and not include_fork_servers:
                continue
            if "replica" in args and marker in args and pid_alive(int(entry.name)):
                pids.add(int(entry.name))
    return pids


class ControllerProcess:
    def __init__(self, data_dir: pathlib.Path, port: int, database: str = "") -> None:
        DATA_DIRS.add(data_dir)
        self.address = f"127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway",
                "controller",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--insecure-no-auth",
                *(["--database", database] if database else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(data_dir.parent / f"controller-{port}.log", "ab"),
        )

    async def ready(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            await channel.channel_ready()


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    yield path
    for pid in replica_pids(path, include_fork_servers=True):
        os.kill(pid, signal.SIGKILL)


async def test_sigkill_and_restart_loses_nothing_and_leaves_no_orphans(data_dir, tmp_path, database):
    port = free_port()
    first = ControllerProcess(data_dir, port, database)
    try:
        await first.ready()
        async with grpc.aio.insecure_channel(first.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            kept = await api.push(api.package("kept"), target=ds.PUSH_TARGET_PRODUCTION)
            kept_running = await api.wait_state(kept.deployment.id, ACTIVE)
            stopped = await api.push(api.package("stopped"), target=ds.PUSH_TARGET_PUBLISHED)
            stopped_running = await api.wait_state(stopped.deployment.id, ACTIVE)
            # Accepted just before the crash: the restarted controller must carry them out.
            await api.deployments.DeactivateDeployment(
                ds.DeactivateDeploymentRequest(deployment_id=stopped.deployment.id)
            )
            late = await api.push(api.package("late"), target=ds.PUSH_TARGET_PUBLISHED)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
    finally:
        first.process.kill()

    second = ControllerProcess(data_dir, port, database)
    try:
        await second.ready()
        async with grpc.aio.insecure_channel(second.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            assert (await api.model("kept")).production_deployment_id == kept.deployment.id
            await api.wait_state(kept.deployment.id, ACTIVE)

            # On PostgreSQL the new controller leads once the killed one's lease has expired.
            async def listed() -> r.Deployment | None:  # READY: an adopted replica is first LOADING
                found = await api.get(kept.deployment.id)
                return found if any(rep.state == r.REPLICA_STATE_READY for rep in found.replicas) else None

            adopted = await wait_until(listed, timeout=30, what="the running replica to be adopted")
            assert [rep.pid for rep in adopted.replicas] == [rep.pid for rep in kept_running.replicas], "not adopted"
            assert (await api.predict(adopted)).startswith(b"{")

            await api.wait_state(stopped.deployment.id, r.DEPLOYMENT_STATE_INACTIVE)
            assert not pid_alive(stopped_running.replicas[0].pid)
            late_running = await api.wait_state(late.deployment.id, ACTIVE)

            expected = {rep.pid for d in (adopted, late_running) for rep in d.replicas}
            assert replica_pids(data_dir) == expected
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(30) == 0
        assert replica_pids(data_dir, include_fork_servers=True) == set(), "graceful shutdown left processes running"
    finally:
        second.process.kill()


async def test_stray_replica_processes_are_stopped_on_start(data_dir, tmp_path):
    """A replica process of this data directory that no record owns is cleaned up."""
    from conftest import write_package

    package = write_package(tmp_path / "stray", "stray", "class Model:\n    def predict(self, x):\n        return x\n")
    (data_dir / "run").mkdir()
    stray = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "replica",
            "--package",
            str(package),
            "--state-file",
            str(data_dir / "run" / "r_stray.json"),
            "--replica-id",
            "r_stray",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, REPLICA_TOKEN_ENV: "stray-token"},
    )
    try:
        await wait_until(lambda: (data_dir / "run" / "r_stray.json").exists(), what="stray replica to start")
        controller = ControllerProcess(data_dir, free_port())
        try:
            await controller.ready()
            assert stray.wait(10) is not None
            assert replica_pids(data_dir) == set()
        finally:
            controller.process.kill()
    finally:
        stray.kill()
