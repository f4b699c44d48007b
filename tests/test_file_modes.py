"""The data directory is private whatever the umask (issue 10, item 5): the directory is
0700 and nothing in it (database, packages unpacked from archives that carry their own
modes, logs, state files, the secrets key) is readable by group or others; a data dir
left with loose modes is tightened at start."""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import subprocess
import tempfile

import grpc
import pytest
from conftest import ECHO_MODEL, Api, controller_settings, stop_or_explain, write_package

from controller.server import Controller
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r


def loose_entries(root) -> list[str]:
    """Everything under `root` that group or others may read, write or enter."""
    loose = []
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
                loose.append(f"{oct(stat.S_IMODE(info.st_mode))} {os.path.relpath(path, root)}")
    return loose


@pytest.fixture
def umask_022():
    """The umask an operator's shell commonly has; the controller sets its own at start."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


async def test_everything_in_the_data_dir_is_private_under_umask_022(tmp_path, umask_022):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / "logs").mkdir(mode=0o755)
    (data_dir / "logs" / "old.log").write_text("left by an older version")
    os.chmod(data_dir / "logs" / "old.log", 0o644)
    controller = await Controller.start(controller_settings(data_dir, replica_user="controller"))
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            package = write_package(tmp_path / "pkg", "modes", ECHO_MODEL.format(tag="v1"))
            (package / "model" / "model.py").chmod(0o755)  # the archive carries these modes
            (package / "data").mkdir(mode=0o777)
            (package / "data" / "weights.bin").write_bytes(b"w")
            (package / "data" / "weights.bin").chmod(0o666)
            pushed = await api.push(package)
            await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
            assert (await api.predict(await api.get(pushed.deployment.id))).startswith(b'{"tag"')

            assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
            written = {entry.name for entry in data_dir.iterdir()}
            assert {"controller.db", "packages", "logs", "run", "secrets.key", "builds"} <= written
            assert any((data_dir / "logs").glob("r*.log")) and any((data_dir / "packages").glob("*/model"))
            assert loose_entries(data_dir) == []
    finally:
        await stop_or_explain(controller.stop(), "controller")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check as another user")
async def test_another_user_reads_nothing_in_the_data_dir(umask_022):
    parent = pathlib.Path(tempfile.mkdtemp(prefix="slipway-modes-"))  # pytest's own tmp dirs are 0700
    try:
        parent.chmod(0o755)  # so that only the data dir's own modes are in the way
        controller = await Controller.start(controller_settings(parent / "data", replica_user="controller"))
        await stop_or_explain(controller.stop(), "controller")
        for command, target in (("cat", "controller.db"), ("cat", "secrets.key"), ("ls", "packages")):
            attempt = subprocess.run([command, str(parent / "data" / target)], user="nobody", capture_output=True)
            assert attempt.returncode != 0 and b"Permission denied" in attempt.stderr, (target, attempt.stderr)
    finally:
        shutil.rmtree(parent)
