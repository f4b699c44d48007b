"""Package limits (PackageLimits, set through ControllerSettings): a push that would unpack
past one is refused precisely, while the archive is read, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import tarfile
import threading

import grpc
import pytest
from conftest import Api, controller_settings, stop_or_explain, wait_until, write_package
from test_lifecycle import refused

from controller.packages import PackageLimits
from controller.server import Controller
from slipway.packaging import PackageError, read_model_name
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import model_service_pb2_grpc as ms_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
LIMITS = PackageLimits(
    max_unpacked_bytes=512 * 1024,
    max_files=50,
    max_compression_ratio=10,
    ratio_free_bytes=64 * 1024,
    max_config_bytes=4096,
)
# Each level references the one before nine times: 9**6 leaves from a few hundred bytes.
ALIAS_BOMB = "model_name: bomb\nmodel_metadata:\n  l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]\n" for n in range(1, 6)
)


@pytest.fixture
async def limited(tmp_path):
    running = await Controller.start(controller_settings(tmp_path / "data", package_limits=LIMITS))
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield running, Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
    await stop_or_explain(running.stop(), "controller")


def stored(controller: Controller) -> list[str]:
    return sorted(os.listdir(controller.settings.data_dir / "packages"))


async def refused_leaving_nothing(controller: Controller, api: Api, directory, reason: str, *in_message: str):
    error = await refused(api.push(directory), INVALID, reason)
    for text in in_message:
        assert text in error.details(), error.details()
    assert stored(controller) == []
    assert (await api.models.ListModels(ms.ListModelsRequest())).models == []
    return error


async def test_a_package_over_the_unpacked_size_limit_is_refused(limited):
    controller, api = limited
    package = api.package("big")
    (package / "weights.bin").write_bytes(os.urandom(600 * 1024))  # incompressible: under the ratio
    await refused_leaving_nothing(controller, api, package, "PACKAGE_TOO_LARGE", "max_unpacked_bytes", "524288")


async def test_a_tar_bomb_under_the_size_limit_is_refused_by_its_compression_ratio(limited):
    controller, api = limited
    package = api.package("bomb")
    (package / "zeros.bin").write_bytes(bytes(400 * 1024))  # a few hundred bytes compressed
    await refused_leaving_nothing(
        controller, api, package, "PACKAGE_COMPRESSION_RATIO_TOO_HIGH", "max_compression_ratio = 10"
    )


async def test_a_package_with_too_many_files_is_refused(limited):
    controller, api = limited
    package = api.package("many")
    for n in range(60):
        (package / f"empty-{n}").touch()
    await refused_leaving_nothing(controller, api, package, "PACKAGE_TOO_MANY_FILES", "max_files = 50")


async def test_an_oversized_config_yaml_is_refused(limited):
    controller, api = limited
    package = api.package("wordy", extra_config="# padding\n" * 500)
    await refused_leaving_nothing(controller, api, package, "MALFORMED_PACKAGE", "max_config_bytes", "4096")


async def test_a_package_within_the_limits_deploys(limited):
    controller, api = limited
    package = api.package("fits")
    (package / "data.bin").write_bytes(os.urandom(100 * 1024))
    for n in range(30):
        (package / f"empty-{n}").touch()
    pushed = await api.push(package)
    assert pushed.model.name == "fits"
    assert stored(controller) == sorted(
        [pushed.deployment.package_digest, f"{pushed.deployment.package_digest}.tar.gz"]
    )


async def test_yaml_aliases_in_config_are_refused(api: Api, controller):
    package = api.package("bomb")
    (package / "config.yaml").write_text(ALIAS_BOMB)
    await refused_leaving_nothing(controller, api, package, "MALFORMED_PACKAGE", "alias *l0", "line 4")


async def test_deeply_nested_config_is_refused(api: Api, controller):
    package = api.package("deep", extra_config="model_metadata: " + "[" * 5000 + "]" * 5000 + "\n")
    await refused_leaving_nothing(controller, api, package, "MALFORMED_PACKAGE", "nested too deeply")


def test_the_cli_refuses_yaml_aliases_before_pushing(tmp_path):
    package = write_package(tmp_path / "bomb", "bomb", "class Model: pass\n")
    (package / "config.yaml").write_text(ALIAS_BOMB)
    with pytest.raises(PackageError, match="alias"):
        read_model_name(package)


async def test_other_calls_are_answered_while_a_push_unpacks(api: Api, monkeypatch):
    """The unpack runs off the event loop: held in the middle of extracting, the controller
    still answers, and the push completes once released."""
    extracting, release = threading.Event(), threading.Event()
    extract = tarfile.TarFile.extractfile

    def held_extract(self, *args, **kwargs):
        extracting.set()
        release.wait(30)
        return extract(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", held_extract)
    package = api.package("slow")
    for n in range(20):
        (package / f"file-{n}").write_text(str(n))
    push = asyncio.ensure_future(api.push(package))
    await wait_until(extracting.is_set, what="the push to start extracting")
    listed = await api.models.ListModels(ms.ListModelsRequest(), timeout=10)
    assert listed.models == [] and not push.done()
    release.set()
    assert (await push).model.name == "slow"
