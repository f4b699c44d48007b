"""Replicas as unprivileged users (issue 10, item 6): when the controller is root, each
model's replicas run as a uid of their own and can read neither another model's secret
(its process environment), package, log or state, nor the controller's data or environment.

Replica users need an interpreter every user can read; this machine's own may live under
a private home (pyenv in /root), so the tests make one from the system's Python of the same
version, reading the project's packages through a .pth file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading

import grpc
import pytest
from conftest import DATA_DIRS, Api, controller_settings, stop_or_explain, wait_until
from google.protobuf import json_format
from test_restart import free_port

from controller.files import share_read_only
from controller.isolation import ReplicaUser, ReplicaUserError, Sandboxes, unreachable_path
from controller.server import Controller
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r
from slipway.v1 import secret_service_pb2 as ss
from slipway.v1 import secret_service_pb2_grpc as ss_grpc

UID_RANGE = (250_000, 250_099)
SYSTEM_PYTHON = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="replicas change user only under a root controller"),
    pytest.mark.skipif(
        SYSTEM_PYTHON is None or unreachable_path(SYSTEM_PYTHON) is not None,
        reason="no Python every user can read",
    ),
]

# What the model can do with the paths and secrets it is asked about.
PROBE_MODEL = """
import errno, os

class Model:
    def __init__(self, **kwargs):
        self._secrets = kwargs["secrets"]

    def predict(self, model_input):
        found = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
        found["secret"] = self._secrets[model_input["secret"]]
        for path in model_input["read"]:
            try:
                if os.path.isdir(path):
                    found[path] = "listed " + ",".join(os.listdir(path))
                else:
                    with open(path, "rb") as f:
                        found[path] = "read " + f.read(200).decode(errors="replace")
            except OSError as exc:
                found[path] = errno.errorcode[exc.errno]
        return found
"""


@pytest.fixture(scope="module")
def shared_python():
    """An interpreter and a parent directory for data dirs that every user can reach."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="slipway-isolation-"))
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(root / "python")], check=True)
    site_packages = next((root / "python" / "lib").glob("python*/site-packages"))
    ours = next(pathlib.Path(sys.prefix, "lib").glob("python*/site-packages"))
    (site_packages / "slipway-host.pth").write_text(f"import site; site.addsitedir({str(ours)!r})\n")
    share_read_only(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def start(shared_python: pathlib.Path, name: str, **overrides):
    settings = controller_settings(
        overrides.pop("data_dir", shared_python / name),
        replica_python=str(shared_python / "python" / "bin" / "python"),
        replica_uid_range=UID_RANGE,
        **overrides,
    )
    controller = await Controller.start(settings)
    channel = grpc.aio.insecure_channel(controller.address)
    api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), shared_python / name)
    return controller, api, ss_grpc.SecretServiceStub(channel)


async def deploy(api: Api, secrets, name: str):
    await secrets.SetSecret(ss.SetSecretRequest(name=f"{name}_token", value=f"{name}-secret-value".encode()))
    package = api.package(name, source=PROBE_MODEL, extra_config=f"secrets:\n  {name}_token: null\n")
    pushed = await api.push(package)
    return await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)


async def probe(api: Api, deployment: r.Deployment, secret: str, paths: list[pathlib.Path | str]) -> dict:
    payload = {"secret": secret, "read": [str(p) for p in paths]}
    return json_format.json.loads(await api.predict(deployment, json_format.json.dumps(payload).encode()))


async def test_a_relative_data_dir_serves_models_as_their_users(shared_python, monkeypatch):
    """`--data-dir .slipway` (the default) is relative; a replica runs in its own directory."""
    monkeypatch.chdir(shared_python)
    controller, api, secrets = await start(shared_python, "relative", data_dir=pathlib.Path("relative-data"))
    try:
        deployment = await deploy(api, secrets, "gamma")
        answer = await probe(api, deployment, "gamma_token", [])
        assert answer["uid"] == UID_RANGE[0] and answer["secret"] == "gamma-secret-value"
    finally:
        await stop_or_explain(controller.stop(), "controller")


async def test_a_model_reads_neither_another_models_secrets_and_files_nor_the_controllers(shared_python):
    controller, api, secrets = await start(shared_python, "forked")
    try:
        alpha = await deploy(api, secrets, "alpha")
        beta = await deploy(api, secrets, "beta")
        data_dir = controller.settings.data_dir
        (beta_replica,) = controller.reconciler.replicas_of(beta.id)
        beta_uid = UID_RANGE[0] + 1
        beta_package = data_dir / "sandboxes" / str(beta_uid) / beta.package_digest
        assert (beta_package / "model" / "model.py").is_file() and beta_package.stat().st_uid == beta_uid
        targets = {
            "beta's environment (its secret)": f"/proc/{beta_replica.pid}/environ",
            "beta's package": beta_package / "model" / "model.py",
            "beta's sandbox": data_dir / "sandboxes" / str(beta_uid),
            "beta's log": beta_replica.log_path,
            "beta's state file": controller.reconciler.runtime.state_file(beta_replica.id),
            "the controller's environment": f"/proc/{os.getpid()}/environ",
            "the database": data_dir / "controller.db",
            "the secrets key": data_dir / "secrets.key",
            "the stored packages": data_dir / "packages",
            "the data dir": data_dir,
        }
        found = await probe(api, alpha, "alpha_token", list(targets.values()))

        assert (found["uid"], found["gid"], found["groups"]) == (UID_RANGE[0], UID_RANGE[0], [])
        assert found["secret"] == "alpha-secret-value"
        refused = {what: found[str(path)] for what, path in targets.items()}
        assert refused == dict.fromkeys(targets, "EACCES")
        assert (await probe(api, beta, "beta_token", []))["uid"] == beta_uid

        # A live reload hands the replica its user's copy of the patched package.
        patched_source = PROBE_MODEL.replace('found["secret"] =', 'found["patched"] = True\n        found["secret"] =')
        patched = await api.deployments.PatchDeployment(
            ds.PatchDeploymentRequest(
                deployment_id=alpha.id,
                base_package_digest=alpha.package_digest,
                patches=[ds.FilePatch(path="model/model.py", content=patched_source.encode())],
            ),
            timeout=60,
        )
        assert patched.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, patched.error
        after = await probe(api, await api.get(alpha.id), "alpha_token", [])
        assert (after["patched"], after["uid"], after["secret"]) == (True, UID_RANGE[0], "alpha-secret-value")

        # Copies go with the packages they copy: beta's once beta is deleted and its replica gone.
        await api.models.DeleteModel(ms.DeleteModelRequest(model_id=beta.model_id))

        async def collected() -> bool:  # once the controller has recorded that beta's replica stopped
            await controller.reconciler.collect_garbage(grace_seconds=0)
            return not beta_package.exists()

        await wait_until(collected, what="beta's package copy to be collected")
        assert any((data_dir / "sandboxes" / str(UID_RANGE[0])).iterdir())  # alpha's are in use
    finally:
        await api.channel.close()
        await stop_or_explain(controller.stop(), "controller")


async def test_a_replica_started_as_a_new_process_changes_user_too(shared_python):
    controller, api, secrets = await start(shared_python, "exec", fork_replicas=False)
    try:
        deployment = await deploy(api, secrets, "gamma")
        found = await probe(api, deployment, "gamma_token", [controller.settings.data_dir / "controller.db"])
        assert (found["uid"], found["groups"], found["secret"]) == (UID_RANGE[0], [], "gamma-secret-value")
        assert found[str(controller.settings.data_dir / "controller.db")] == "EACCES"
    finally:
        await api.channel.close()
        await stop_or_explain(controller.stop(), "controller")


SLUGIFY_MODEL = """
import asyncio
import concurrent.futures
import contextlib
import os
from slugify import slugify

class Model:
    def predict(self, model_input):
        return {"slug": slugify(model_input), "uid": os.getuid()}
"""


@pytest.mark.timeout(300)
async def test_a_built_environment_runs_as_the_replica_user(shared_python):
    controller, api, _ = await start(shared_python, "built")
    try:
        package = api.package("built", source=SLUGIFY_MODEL, extra_config="requirements: [python-slugify>=8]\n")
        pushed = await api.push(package)
        deployment = await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE, timeout=240)
        answer = json_format.json.loads(await api.predict(deployment, b'"Hi There"'))
        assert answer == {"slug": "hi-there", "uid": UID_RANGE[0]}
        assert stat.S_IMODE((controller.settings.data_dir / "builds" / "logs").stat().st_mode) == 0o700
    finally:
        await api.channel.close()
        await stop_or_explain(controller.stop(), "controller")


async def test_a_replica_user_that_cannot_work_refuses_the_start_and_writes_nothing(tmp_path):
    refusals = {
        "no-such-user-here": "no such user",
        "root": "is root: replicas must run unprivileged",
        # tmp_path lies under pytest's 0700 directory, and this interpreter under a private home
        "nobody": "other users cannot enter",
    }
    for user, message in refusals.items():
        with pytest.raises(ReplicaUserError, match=message):
            await Controller.start(controller_settings(tmp_path / "data", replica_user=user))
    assert not (tmp_path / "data").exists()


def test_replicas_of_one_model_starting_together_share_its_home(tmp_path, monkeypatch):
    sandboxes = Sandboxes(tmp_path / "sandboxes")
    user = ReplicaUser(UID_RANGE[0], UID_RANGE[0])
    together = threading.Barrier(2, timeout=10)
    mkdir = pathlib.Path.mkdir

    def mkdir_together(self, *args, **kwargs):
        if self.parent == sandboxes.root:
            together.wait()  # both make the model's home at the same moment
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir_together)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        homes = set(pool.map(lambda _: sandboxes.home(user), range(2)))
    assert homes == {sandboxes.root / str(user.uid)}
    assert (sandboxes.root / str(user.uid)).stat().st_uid == user.uid


def test_replicas_starting_together_share_one_copy_of_the_package(tmp_path, monkeypatch):
    stored = tmp_path / "packages" / ("ab" * 32)
    (stored / "model").mkdir(parents=True)
    (stored / "model" / "model.py").write_text("class Model: ...\n")
    sandboxes = Sandboxes(tmp_path / "sandboxes")
    user = ReplicaUser(UID_RANGE[0], UID_RANGE[0])
    both_copying = threading.Barrier(2, timeout=10)
    copytree = shutil.copytree

    def copy_together(*args, **kwargs):
        both_copying.wait()  # two replicas' copies of the same package overlap
        return copytree(*args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copy_together)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        copies = set(pool.map(lambda _: sandboxes.package(user, stored), range(2)))
    assert copies == {tmp_path / "sandboxes" / str(user.uid) / stored.name}
    (copy,) = copies
    assert [entry.name for entry in copy.parent.iterdir()] == [stored.name]  # nothing left aside
    assert {path.stat().st_uid for path in (copy, copy / "model", copy / "model" / "model.py")} == {user.uid}


async def test_a_restarted_controller_reloads_an_adopted_replica_as_its_user(shared_python):
    data_dir = shared_python / "restart"
    port = free_port()

    DATA_DIRS.add(data_dir)  # where api.predict finds the replica's token

    def controller_process() -> subprocess.Popen:
        argv = [sys.executable, "-m", "slipway", "controller", "--port", str(port), "--data-dir", str(data_dir)]
        argv += ["--replica-python", str(shared_python / "python" / "bin" / "python")]
        argv += ["--replica-uid-range", f"{UID_RANGE[0]}-{UID_RANGE[1]}"]
        argv += ["--insecure-no-auth"]  # isolation is under test here; API keys are test_api_keys.py's
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    first, second, running = controller_process(), None, None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), data_dir)
            running = await deploy(api, ss_grpc.SecretServiceStub(channel), "delta")
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        second = controller_process()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), data_dir)
            adopted = await api.wait_state(running.id, r.DEPLOYMENT_STATE_ACTIVE)
            assert [rep.pid for rep in adopted.replicas] == [rep.pid for rep in running.replicas], "not adopted"
            patched = await api.deployments.PatchDeployment(
                ds.PatchDeploymentRequest(
                    deployment_id=running.id,
                    base_package_digest=running.package_digest,
                    patches=[ds.FilePatch(path="model/extra.py", content=b"X = 1\n")],
                ),
                timeout=60,
            )
            assert patched.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, patched.error
            found = await probe(api, await api.get(running.id), "delta_token", [])
            assert (found["uid"], found["secret"]) == (UID_RANGE[0], "delta-secret-value")
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait(10)
        for rep in running.replicas if running is not None else ():  # replicas outlive a killed controller
            with contextlib.suppress(ProcessLookupError):
                os.kill(rep.pid, signal.SIGKILL)
