"""Live reload of development deployments: PatchDeployment with a real controller,
gateway and replica processes, and `slipway watch` as a real CLI process."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sys
import time

import grpc
import pytest
from conftest import Api, wait_until
from test_lifecycle import refused

from slipway.packaging import archive_package
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import resources_pb2 as r
from slipway.watch import PackageTree, compute_patch

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
REPO = pathlib.Path(__file__).resolve().parent.parent

# `helpers` is imported absolutely, from the model directory on sys.path: a reload must
# re-import it from the new package rather than reuse the cached module.
MODEL_SOURCE = """\
import os
import signal
import helpers

SUFFIX = {suffix!r}


class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        {load}

    def predict(self, model_input):
        return {{
            "model": SUFFIX,
            "helper": helpers.VERSION,
            "pid": os.getpid(),
            "greeting": os.environ.get("GREETING", ""),
        }}
"""


def model_source(suffix: str = "one", load: str = "pass") -> bytes:
    return MODEL_SOURCE.format(suffix=suffix, load=load).encode()


def write_live_package(root: pathlib.Path, model_name: str = "live") -> pathlib.Path:
    (root / "model").mkdir(parents=True)
    (root / "config.yaml").write_text(f"model_name: {model_name}\n")
    (root / "model" / "model.py").write_bytes(model_source())
    (root / "model" / "helpers.py").write_text('VERSION = "h1"\n')
    return root


async def patch(api: Api, deployment_id: str, base: str, changes: dict[str, bytes | None], request_id: str = ""):
    """PatchDeployment; a None content deletes the file."""
    patches = [
        ds.FilePatch(path=path, delete=True) if content is None else ds.FilePatch(path=path, content=content)
        for path, content in changes.items()
    ]
    request = ds.PatchDeploymentRequest(
        deployment_id=deployment_id, base_package_digest=base, patches=patches, request_id=request_id
    )
    return await api.deployments.PatchDeployment(request, timeout=60)


class Development:
    """A development deployment and calls to it through the gateway (gRPC)."""

    def __init__(self, api: Api, gateway, package: pathlib.Path) -> None:
        self.api = api
        self.gateway = gateway
        self.package = package
        self.model_id = ""
        self.deployment: r.Deployment

    async def start(self) -> Development:
        pushed = await self.api.push(self.package)
        self.model_id = pushed.model.id
        self.deployment = await self.api.wait_state(pushed.deployment.id, ACTIVE)
        return self

    async def predict(self) -> dict:
        request = inf.PredictRequest(
            target=inf.Target(model_id=self.model_id, environment=inf.ENVIRONMENT_DEVELOPMENT),
            payload=b'"hi"',
            content_type="application/json",
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.gateway.grpc_port}") as channel:
            response = await inf_grpc.InferenceServiceStub(channel).Predict(request, timeout=20)
        return json.loads(response.payload)

    async def answer(self, **expected) -> dict:
        """The first answer through the gateway that has the expected fields."""

        async def check():
            try:
                answer = await self.predict()
            except grpc.aio.AioRpcError:
                return None  # not routed yet, or restarting
            return answer if all(answer[k] == v for k, v in expected.items()) else None

        return await wait_until(check, 60, f"an answer with {expected}")


@pytest.fixture
async def dev(api: Api, gateway, tmp_path) -> Development:
    return await Development(api, gateway, write_live_package(tmp_path / "live")).start()


async def test_model_code_edit_is_served_by_the_same_process(api: Api, dev: Development):
    before = await dev.answer(model="one", helper="h1")

    (dev.package / "model" / "model.py").write_bytes(model_source("two"))
    patched = await patch(
        api, dev.deployment.id, dev.deployment.package_digest, {"model/model.py": model_source("two")}
    )
    assert patched.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, patched.error
    # Content-addressed like a push: the same files give the same digest.
    assert patched.package_digest == archive_package(dev.package)[1]
    assert patched.deployment.package_digest == patched.package_digest
    assert patched.deployment.revision == dev.deployment.revision, "an in-place reload is not a new revision"
    after = await dev.predict()
    assert (after["model"], after["pid"]) == ("two", before["pid"])

    helper = await patch(api, dev.deployment.id, patched.package_digest, {"model/helpers.py": b'VERSION = "h2"\n'})
    assert helper.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, helper.error
    after = await dev.predict()
    assert (after["model"], after["helper"], after["pid"]) == ("two", "h2", before["pid"])


async def test_broken_code_keeps_the_old_code_serving_and_reports_the_traceback(api: Api, dev: Development):
    before = await dev.answer(model="one")

    broken = await patch(
        api,
        dev.deployment.id,
        dev.deployment.package_digest,
        {"model/model.py": b"class Model:\n    def predict(self, model_input)\n        return 1\n"},
    )
    assert broken.result == ds.PATCH_RESULT_FAILED
    assert broken.error.startswith("SyntaxError"), broken.error
    assert broken.traceback.startswith('  File "model/model.py", line 2'), broken.traceback
    assert await dev.predict() == before

    failing_load = await patch(
        api,
        dev.deployment.id,
        broken.package_digest,
        {"model/model.py": model_source("two", load='raise RuntimeError("no weights")')},
    )
    assert failing_load.result == ds.PATCH_RESULT_FAILED
    assert failing_load.error == "RuntimeError: no weights"
    assert "in load" in failing_load.traceback
    assert await dev.predict() == before

    # The broken package is the base of the next patch: the fix is a patch on top of it.
    fixed = await patch(api, dev.deployment.id, failing_load.package_digest, {"model/model.py": model_source("three")})
    assert fixed.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, fixed.error
    after = await dev.predict()
    assert (after["model"], after["pid"]) == ("three", before["pid"])


async def test_config_change_restarts_the_replica(api: Api, dev: Development):
    before = await dev.answer(model="one")

    config = b"model_name: live\nenvironment_variables:\n  GREETING: hello\n"
    patched = await patch(api, dev.deployment.id, dev.deployment.package_digest, {"config.yaml": config})
    assert patched.result == ds.PATCH_RESULT_RESTARTED
    assert patched.deployment.revision == dev.deployment.revision + 1
    after = await dev.answer(greeting="hello")
    assert after["pid"] != before["pid"]
    assert after["model"] == "one"


async def test_changing_only_a_requirements_file_restarts_rather_than_reloads(api: Api, dev: Development):
    """The environment must be rebuilt, so the code cannot just be reloaded in place."""
    config = b"model_name: live\nrequirements_file: requirements.txt\n"
    first = await patch(
        api, dev.deployment.id, dev.deployment.package_digest, {"config.yaml": config, "requirements.txt": b""}
    )
    assert first.result == ds.PATCH_RESULT_RESTARTED  # a config key changed
    await api.wait_state(dev.deployment.id, ACTIVE)
    second = await patch(api, dev.deployment.id, first.package_digest, {"requirements.txt": b"# pinned\nsix\n"})
    assert second.result == ds.PATCH_RESULT_RESTARTED
    assert second.deployment.revision == first.deployment.revision + 1


async def test_patch_with_a_stale_base_is_refused(api: Api, dev: Development):
    stale = dev.deployment.package_digest
    patched = await patch(api, dev.deployment.id, stale, {"model/model.py": model_source("two")})
    assert patched.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, patched.error

    await refused(
        patch(api, dev.deployment.id, stale, {"model/model.py": model_source("three")}),
        grpc.StatusCode.ABORTED,
        "STALE_PACKAGE_BASE",
    )
    assert (await api.get(dev.deployment.id)).package_digest == patched.package_digest
    assert (await dev.predict())["model"] == "two"


async def test_published_and_production_deployments_are_not_live_reloaded(api: Api, tmp_path):
    package = write_live_package(tmp_path / "published", "published-live")
    production = await api.push(package, target=ds.PUSH_TARGET_PRODUCTION)
    published = await api.push(package, target=ds.PUSH_TARGET_PUBLISHED)
    await api.wait_production(production.model.id, production.deployment.id)
    for pushed in (production, published):
        deployment = pushed.deployment
        await refused(
            patch(api, deployment.id, deployment.package_digest, {"model/model.py": model_source("two")}),
            grpc.StatusCode.FAILED_PRECONDITION,
            "LIVE_RELOAD_DEVELOPMENT_ONLY",
        )
        after = await api.get(deployment.id)
        assert (after.package_digest, after.revision) == (deployment.package_digest, deployment.revision)


async def test_reactivated_development_comes_back_with_the_latest_code(api: Api, dev: Development):
    before = await dev.answer(model="one")
    patched = await patch(
        api, dev.deployment.id, dev.deployment.package_digest, {"model/model.py": model_source("two")}
    )
    assert patched.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, patched.error

    await api.deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=dev.deployment.id))
    await api.wait_state(dev.deployment.id, r.DEPLOYMENT_STATE_INACTIVE)
    stored = await patch(api, dev.deployment.id, patched.package_digest, {"model/model.py": model_source("three")})
    assert stored.result == ds.PATCH_RESULT_STORED, "no replica runs: nothing was reloaded"
    await api.deployments.ActivateDeployment(ds.ActivateDeploymentRequest(deployment_id=dev.deployment.id))
    await api.wait_state(dev.deployment.id, ACTIVE)

    after = await dev.answer(model="three")
    assert after["pid"] != before["pid"], "a new replica process, started from the patched package"


async def test_patches_are_checked_and_idempotent(api: Api, tmp_path):
    pushed = await api.push(write_live_package(tmp_path / "checked", "checked"))
    deployment_id, base = pushed.deployment.id, pushed.deployment.package_digest
    for path in ("../escape.py", "/etc/passwd", "model/../../escape.py", ""):
        await refused(
            patch(api, deployment_id, base, {path: b"x"}), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PATCH_PATH"
        )
    await refused(patch(api, deployment_id, base, {}), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_PATCH")
    await refused(
        patch(api, deployment_id, base, {"config.yaml": b"model_name: [unclosed\n"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_PACKAGE",
    )
    await refused(
        patch(api, deployment_id, base, {"config.yaml": b"model_name: checked\nsystem_packages: [ffmpeg]\n"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNSUPPORTED_PACKAGE_CONFIG",
    )
    assert (await api.get(deployment_id)).package_digest == base

    warned = await patch(
        api, deployment_id, base, {"config.yaml": b"model_name: checked\nshiny_new_key: 1\n", "data/old.txt": b"o"}
    )
    assert any("shiny_new_key" in warning for warning in warned.warnings), warned.warnings
    base = warned.package_digest

    first = await patch(api, deployment_id, base, {"data/old.txt": None, "data/notes.txt": b"n"}, request_id="p-1")
    retried = await patch(api, deployment_id, base, {"data/old.txt": None, "data/notes.txt": b"n"}, request_id="p-1")
    assert retried.package_digest == first.package_digest != base
    assert (await api.get(deployment_id)).package_digest == first.package_digest


def test_compute_patch_sends_only_what_changed(tmp_path):
    package = write_live_package(tmp_path / "local")
    tree = PackageTree(package)
    base = tree.manifest()
    assert sorted(base) == ["config.yaml", "model/helpers.py", "model/model.py"]
    assert not compute_patch(tree, base).files

    (package / "model" / "model.py").write_bytes(model_source("two"))
    (package / "model" / "helpers.py").unlink()
    (package / "model" / "extra.py").write_text("X = 1\n")
    for junk in (".model.py.swp", "model.py~", ".#model.py", "4913", "__pycache__/model.cpython-311.pyc"):
        (package / "model" / junk).parent.mkdir(exist_ok=True)
        (package / "model" / junk).write_text("editor noise")
    (package / ".slipwayignore").write_text("*.log\n")
    (package / "model" / "debug.log").write_text("ignored")

    patch = compute_patch(tree, base)
    assert [(e.path, e.kind) for e in patch.edits] == [
        (".slipwayignore", "added"),
        ("model/extra.py", "added"),
        ("model/helpers.py", "deleted"),
        ("model/model.py", "changed"),
    ]
    assert [f.content for f in patch.files if f.path == "model/model.py"] == [model_source("two")]
    assert [f.delete for f in patch.files if f.path == "model/helpers.py"] == [True]
    assert not compute_patch(tree, patch.manifest).files


def test_push_watch_is_for_development_only(tmp_path):
    from click.testing import CliRunner

    from slipway.cli import cli

    package = write_live_package(tmp_path / "pkg")
    result = CliRunner().invoke(cli, ["push", "--watch", "--publish", str(package)])
    assert result.exit_code == 2 and "--watch" in result.output


# --- `slipway watch` as a process ---------------------------------------------------------


class OutputLines:
    """Lines of a subprocess's output, waited for with a timeout."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self.seen: list[str] = []

    async def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self._stream.readline(), max(remaining, 0.01))
            except TimeoutError:
                line = b""
            if not line:
                raise AssertionError(
                    f"no line with {text!r} within {timeout}s; output so far:\n" + "\n".join(self.seen)
                )
            self.seen.append(line.decode().rstrip())
            if text in self.seen[-1]:
                return self.seen[-1]


async def test_slipway_watch_reloads_each_edit_and_prints_a_line(api: Api, controller, tmp_path):
    package = write_live_package(tmp_path / "watched", "watched")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "slipway",
        "--controller",
        controller.address,
        "watch",
        str(package),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = OutputLines(process.stdout)
    try:
        pushed = await output.wait_for("Pushed watched to development deployment")
        assert "serving" in pushed
        await output.wait_for("Watching")
        model = await api.model("watched")
        running = await api.wait_state(model.development_deployment_id, ACTIVE)
        pid = running.replicas[0].pid

        (package / "model" / "model.py").write_bytes(model_source("two"))
        line = await output.wait_for("model/model.py changed")
        assert "applied in place" in line
        reloaded = await api.get(running.id)
        assert json.loads(await api.predict(reloaded))["model"] == "two"
        assert reloaded.replicas[0].pid == pid

        (package / "model" / "model.py").write_bytes(b"def broken(:\n")
        line = await output.wait_for("model/model.py changed")
        assert "failed, the previous code keeps serving: SyntaxError" in line

        (package / "config.yaml").write_text("model_name: watched\nenvironment_variables:\n  GREETING: hi\n")
        (package / "model" / "model.py").write_bytes(model_source("three"))
        line = await output.wait_for("config.yaml changed")
        assert "restarted" in line and "failed" not in line
        restarted = await api.get(running.id)
        answer = json.loads(await api.predict(restarted))
        assert (answer["model"], answer["greeting"]) == ("three", "hi")
    finally:
        process.terminate()
        await process.wait()


async def test_watch_sends_changes_made_while_the_controller_was_down_once_it_is_back(tmp_path):
    from test_restart import ControllerProcess, free_port, replica_pids

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    controller = ControllerProcess(data_dir, port)
    package = write_live_package(tmp_path / "watched", "watched")
    process = None
    try:
        await controller.ready()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "slipway",
            "--controller",
            controller.address,
            "watch",
            str(package),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        output = OutputLines(process.stdout)
        await output.wait_for("Watching")

        controller.process.kill()
        controller.process.wait(10)
        (package / "model" / "model.py").write_bytes(model_source("two"))
        assert "UNAVAILABLE" in await output.wait_for("model/model.py changed: failed")

        controller = ControllerProcess(data_dir, port)
        await controller.ready()
        # No further edit: the watcher sends the pending change by itself.
        assert "applied in place" in await output.wait_for("model/model.py changed")
        async with grpc.aio.insecure_channel(controller.address) as channel:
            from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
            from slipway.v1 import model_service_pb2_grpc as ms_grpc

            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            model = await api.model("watched")
            deployment = await api.wait_state(model.development_deployment_id, ACTIVE)
            assert json.loads(await api.predict(deployment))["model"] == "two"
    finally:
        if process is not None:
            process.terminate()
            await process.wait()
        controller.process.kill()
        for pid in replica_pids(data_dir, include_fork_servers=True):
            os.kill(pid, signal.SIGKILL)


def test_watch_sends_changes_in_bundled_external_directories(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "helper.py").write_text("X = 1\n")
    package = write_live_package(tmp_path / "pkg")
    (package / "config.yaml").write_text("model_name: live\nexternal_package_dirs: [../shared]\n")
    tree = PackageTree(package)
    base = tree.manifest()
    assert ".external/0/helper.py" in base

    (tmp_path / "shared" / "helper.py").write_text("X = 2\n")
    (tmp_path / "shared" / "more.py").write_text("Y = 1\n")
    patch = compute_patch(tree, base)
    assert {(f.path, f.content) for f in patch.files} == {
        (".external/0/helper.py", b"X = 2\n"),
        (".external/0/more.py", b"Y = 1\n"),
    }


def test_an_external_directory_linked_from_inside_the_package_is_bundled_and_used(tmp_path):
    import io
    import tarfile

    from replica.package import load_package_config

    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "helper.py").write_text("X = 1\n")
    package = write_live_package(tmp_path / "pkg")
    (package / "shared").symlink_to(tmp_path / "shared")  # inside by name, outside in fact
    (package / "config.yaml").write_text("model_name: live\nexternal_package_dirs: [shared]\n")
    stored = tmp_path / "stored"
    with tarfile.open(fileobj=io.BytesIO(archive_package(package)[0])) as archive:
        archive.extractall(stored)  # an archive the test made; Python 3.11 before 3.11.4 has no filter
    assert load_package_config(stored).external_package_dirs == (stored.resolve() / ".external" / "0",)
    assert (stored / ".external" / "0" / "helper.py").read_text() == "X = 1\n"
