"""Builds (isolated environments for package requirements) and Truss package compatibility.

Real controller, real uv installs from PyPI (uv's cache keeps them fast), real replica
subprocesses. The package used as a requirement, python-slugify (with text-unidecode),
is not installed in the controller's environment, and the tests check it stays that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import grpc
import pytest
from click.testing import CliRunner
from conftest import Api, controller_settings, error_reason, replica_metadata, wait_until, write_package

from controller import compat
from controller.builds import MARKER, BuildManager
from controller.environment_specs import normalise_requirement
from controller.errors import InvalidArgument
from controller.server import Controller
from replica.package import load_package_config, read_requirements
from slipway.packaging import PackageError, archive_package, package_entries
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import replica_service_pb2_grpc as rs_grpc
from slipway.v1 import resources_pb2 as r

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
BUILD_FAILED = r.DEPLOYMENT_STATE_BUILD_FAILED
BUILD_TIMEOUT = 240.0  # a cold uv cache downloads from PyPI
pytestmark = pytest.mark.timeout(600)

SLUGIFY_MODEL = """
import sys

from slugify import slugify


class Model:
    def __init__(self, **kwargs):
        self.tag = {tag!r}

    def load(self):
        pass

    def predict(self, model_input):
        return {{"tag": self.tag, "slug": slugify(model_input), "prefix": sys.prefix}}
"""

# Truss model features, run in a built environment: secrets, environment variables,
# model_metadata, preprocess → predict → postprocess, predict_concurrency.
FEATURES_MODEL = """
import os
import threading
import time

from slugify import slugify


class Model:
    def __init__(self, **kwargs):
        self._secrets = kwargs["secrets"]
        self._config = kwargs["config"]
        self._lock = threading.Lock()
        self._active = 0
        self._most = 0

    def load(self):
        pass

    def preprocess(self, model_input):
        return {**model_input, "steps": ["pre"]}

    def predict(self, model_input):
        if model_input.get("overlap"):
            with self._lock:
                self._active += 1
                self._most = max(self._most, self._active)
            time.sleep(0.05)
            with self._lock:
                self._active -= 1
            return {"most": self._most}
        return {
            "steps": model_input["steps"] + ["predict"],
            "slug": slugify(model_input["text"]),
            "secret": self._secrets.get("api_key"),
            "visible_secrets": sorted(name for name in os.environ if name.startswith("SLIPWAY_SECRET_")),
            "other_secret_in_process": b"not-yours" in open("/proc/self/environ", "rb").read(),
            "greeting": os.environ.get("GREETING"),
            "metadata": self._config.get("model_metadata"),
        }

    def postprocess(self, model_output):
        if isinstance(model_output, dict) and "steps" in model_output:
            model_output["steps"].append("post")
        return model_output
"""

STREAMING_MODEL = """
from slugify import slugify


class Model:
    def preprocess(self, model_input):
        return model_input["text"].split()

    def predict(self, words):
        for word in words:
            yield slugify(word) + ";"
"""

SLUGIFY = "python-slugify>=8"
REQUIREMENTS = f"requirements: [{SLUGIFY}]\n"


def assert_not_in_controller_env() -> None:
    assert importlib.util.find_spec("slugify") is None, "python-slugify leaked into the controller's environment"
    assert importlib.util.find_spec("text_unidecode") is None


async def events(api: Api, deployment_id: str) -> list[r.Event]:
    response = await api.deployments.ListEvents(ds.ListEventsRequest(deployment_id=deployment_id, page_size=1000))
    return list(response.events)


async def event_types(api: Api, deployment_id: str) -> list[str]:
    return [e.type for e in await events(api, deployment_id)]


async def invoke(deployment: r.Deployment, payload: object) -> object:
    return json.loads(await _api_predict(deployment, json.dumps(payload).encode()))


async def _api_predict(deployment: r.Deployment, payload: bytes) -> bytes:
    ready = [rep for rep in deployment.replicas if rep.state == r.REPLICA_STATE_READY]
    assert ready, f"no ready replica in {deployment}"
    async with grpc.aio.insecure_channel(ready[0].address) as channel:
        response = await rs_grpc.ReplicaServiceStub(channel).Invoke(
            rs.InvokeRequest(payload=payload, content_type="application/json"),
            timeout=20,
            metadata=replica_metadata(ready[0].id),
        )
    return response.payload


def builds_of(controller: Controller) -> BuildManager:
    return controller.reconciler.builds


@pytest.fixture
def api_factory(tmp_path):
    """Start a controller on a data directory (again, for restarts) with an Api on it."""
    started = 0

    @contextlib.asynccontextmanager
    async def start(data_dir: pathlib.Path):
        nonlocal started
        started += 1
        packages = tmp_path / f"packages-{started}"
        packages.mkdir()
        running = await Controller.start(controller_settings(data_dir))
        try:
            async with grpc.aio.insecure_channel(running.address) as channel:
                yield Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), packages)
        finally:
            await running.stop()

    return start


# --- building, running, reusing -----------------------------------------------------------


async def test_requirements_are_built_into_an_isolated_environment_and_used(api: Api, controller):
    assert_not_in_controller_env()
    pushed = await api.push(api.package("slugger", source=SLUGIFY_MODEL.format(tag="a"), extra_config=REQUIREMENTS))
    assert list(pushed.warnings) == []
    deployment = await api.wait_state(pushed.deployment.id, ACTIVE, timeout=BUILD_TIMEOUT)

    answer = await invoke(deployment, "Héllo Wörld, ça va?")
    assert answer["slug"] == "hello-world-ca-va"
    envs = builds_of(controller).envs_dir
    assert pathlib.Path(answer["prefix"]).parent == envs  # the replica runs in the built environment
    assert_not_in_controller_env()

    history = await events(api, deployment.id)
    states = [e.message.split(":")[0] for e in history if e.type == "deployment.state_changed"]
    assert any(s.endswith("-> BUILDING") for s in states), states
    assert states.index(next(s for s in states if s.endswith("-> BUILDING"))) < states.index(
        next(s for s in states if s.endswith("-> ACTIVE"))
    )
    assert [e.type for e in history].count("deployment.build_started") == 1
    assert "deployment.build_succeeded" in [e.type for e in history]
    log = (controller.settings.data_dir / "builds" / "logs" / f"{deployment.id}.log").read_text()
    assert "python-slugify" in log and "pip install" in log
    (env,) = [p for p in envs.iterdir() if not p.name.startswith(".")]
    assert (env / MARKER).is_file()
    builds = controller.metrics.registry
    assert builds.get_sample_value("slipway_build_duration_seconds_count", {"outcome": "succeeded"}) == 1
    assert builds.get_sample_value("slipway_build_duration_seconds_count", {"outcome": "failed"}) is None


async def test_identical_requirements_share_one_build(api: Api, controller):
    builds = builds_of(controller)
    # Two deployments of different models pushed back to back: one build, awaited by both.
    first = await api.push(api.package("one", source=SLUGIFY_MODEL.format(tag="one"), extra_config=REQUIREMENTS))
    second = await api.push(
        api.package(
            "two", source=SLUGIFY_MODEL.format(tag="two"), extra_config="requirements: ['Python_Slugify >= 8']\n"
        )
    )
    one = await api.wait_state(first.deployment.id, ACTIVE, timeout=BUILD_TIMEOUT)
    two = await api.wait_state(second.deployment.id, ACTIVE, timeout=BUILD_TIMEOUT)
    assert builds.installs == 1
    second_events = await events(api, two.id)
    assert any(e.type == "deployment.build_started" and e.message.startswith("waiting for") for e in second_events) or (
        "deployment.environment_reused" in [e.type for e in second_events]
    )
    (env,) = [p for p in builds.envs_dir.iterdir() if not p.name.startswith(".")]
    marker = (env / MARKER).stat()
    assert (await invoke(one, "A B"))["slug"] == "a-b"
    assert (await invoke(two, "C D")) == {"tag": "two", "slug": "c-d", "prefix": str(env)}

    # Later, a third one (a published deployment, requirements from a file): nothing is installed.
    package = api.package(
        "three", source=SLUGIFY_MODEL.format(tag="three"), extra_config="requirements_file: reqs.txt\n"
    )
    (package / "reqs.txt").write_text("# what we need\npython-slugify \\\n  >=8  # slugs\n\n")
    third = await api.push(package, target=ds.PUSH_TARGET_PUBLISHED)
    three = await api.wait_state(third.deployment.id, ACTIVE, timeout=BUILD_TIMEOUT)
    assert (await invoke(three, "E"))["prefix"] == str(env)
    assert builds.installs == 1
    assert (env / MARKER).stat().st_mtime_ns == marker.st_mtime_ns
    third_events = await event_types(api, three.id)
    assert "deployment.environment_reused" in third_events and "deployment.build_started" not in third_events
    third_log = builds.log_path(three.id).read_text()
    assert "reusing it, nothing to install" in third_log and "pip install" not in third_log
    assert_not_in_controller_env()


async def test_unresolvable_requirement_is_build_failed_with_the_installer_message(api: Api, controller, tmp_path):
    bad = "requirements: [slipway-no-such-package-xyz==9.9]\n"
    production = await api.push(api.package("m", tag="prod"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(production.model.id, production.deployment.id)

    pushed = await api.push(api.package("m", extra_config=bad), target=ds.PUSH_TARGET_PRODUCTION)
    failed = await api.wait_state(pushed.deployment.id, BUILD_FAILED, timeout=BUILD_TIMEOUT)
    assert "slipway-no-such-package-xyz" in failed.status_message
    assert "install the requirements" in failed.status_message
    assert failed.desired_replicas == 0 and not failed.replicas
    # The promotion waiting for it gave up; production is unchanged.
    model = await api.model(pushed.model.id)
    assert model.production_deployment_id == production.deployment.id and not model.promoting_deployment_id
    history = await event_types(api, failed.id)
    assert "deployment.build_failed" in history and history.count("deployment.build_started") == 1
    log = builds_of(controller).log_path(failed.id).read_text()
    assert "slipway-no-such-package-xyz" in log and "FAILED" in log
    assert not [p for p in builds_of(controller).envs_dir.iterdir()]  # nothing half-built left behind
    failures = controller.metrics.registry.get_sample_value(
        "slipway_build_duration_seconds_count", {"outcome": "failed"}
    )
    assert failures == 1

    # Not retried by itself; retried when activated again.
    await api.deployments.ActivateDeployment(ds.ActivateDeploymentRequest(deployment_id=failed.id))

    async def second_failure():
        d = await api.get(failed.id)
        started = (await event_types(api, failed.id)).count("deployment.build_started")
        return d if d.state == BUILD_FAILED and started == 2 else None

    await wait_until(second_failure, BUILD_TIMEOUT, "the re-activated deployment to fail its build again")


async def test_a_failed_build_is_not_retried_after_a_restart(tmp_path, api_factory):
    data_dir = tmp_path / "data"
    async with api_factory(data_dir) as api:
        pushed = await api.push(api.package("m", extra_config="requirements: [slipway-no-such-package-xyz==9.9]\n"))
        await api.wait_state(pushed.deployment.id, BUILD_FAILED, timeout=BUILD_TIMEOUT)
    async with api_factory(data_dir) as api:
        # A deployment pushed after the restart becomes ACTIVE: reconcile passes have run.
        other = await api.push(api.package("other"))
        await api.wait_state(other.deployment.id, ACTIVE)
        still = await api.get(pushed.deployment.id)
        assert still.state == BUILD_FAILED and "slipway-no-such-package-xyz" in still.status_message
        assert (await event_types(api, still.id)).count("deployment.build_started") == 1


async def test_a_restart_mid_build_leaves_no_half_built_environment(tmp_path, api_factory):
    data_dir = tmp_path / "data"
    async with api_factory(data_dir) as api:
        pushed = await api.push(api.package("m", source=SLUGIFY_MODEL.format(tag="x"), extra_config=REQUIREMENTS))
        await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_BUILDING, timeout=BUILD_TIMEOUT)
    envs = data_dir / "builds" / "envs"
    for entry in envs.iterdir():  # stopped mid-build: only complete environments remain
        assert not entry.name.startswith(".") and (entry / MARKER).is_file(), entry
    async with api_factory(data_dir) as api:
        deployment = await api.wait_state(pushed.deployment.id, ACTIVE, timeout=BUILD_TIMEOUT)
        assert (await invoke(deployment, "Z Z"))["slug"] == "z-z"


def test_leftovers_of_a_dead_build_are_removed_and_never_ready(tmp_path):
    envs = tmp_path / "envs"
    half = envs / ".tmp-abc-999999999-0"  # a pid that cannot exist
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").touch()
    unmarked = envs / "abc"
    (unmarked / "bin").mkdir(parents=True)
    (unmarked / "bin" / "python").touch()
    builds = BuildManager(tmp_path)
    assert not half.exists()
    assert not builds.ready("abc")  # no completion marker: not an environment
    (unmarked / MARKER).write_text("{}")
    assert builds.ready("abc")


def test_environment_key_follows_normalised_requirements_only(tmp_path):
    builds = BuildManager(tmp_path / "builds")

    def key(config: str) -> str | None:
        package = tmp_path / f"p{abs(hash(config))}"
        (package / "model").mkdir(parents=True, exist_ok=True)
        (package / "config.yaml").write_text("model_name: m\n" + config)
        spec = builds.spec_for(package)
        return spec.key if spec else None

    assert key("") is None and key("requirements: []\n") is None
    assert key("requirements: [six==1.16.0, Text-Unidecode]\n") == key(
        "requirements: [text_unidecode, 'Six == 1.16.0']\n"
    )
    assert key("requirements: [six==1.16.0]\n") != key("requirements: [six==1.17.0]\n")
    assert (
        normalise_requirement('Requests[socks] >=2 ;  python_version < "3.12"')
        == 'requests[socks]>=2 ; python_version < "3.12"'
    )


# --- Truss features through the controller, in a built environment ----------------------------


@pytest.fixture
def secret_env(monkeypatch):
    """Secrets come from the controller's environment (set before it starts); a replica
    sees only those its package declares."""
    monkeypatch.setenv("SLIPWAY_SECRET_API_KEY", "s3cret")
    monkeypatch.setenv("SLIPWAY_SECRET_OTHER_MODELS_KEY", "not-yours")


async def test_truss_model_features_through_the_controller(secret_env, api: Api):
    config = REQUIREMENTS + textwrap.dedent(
        """\
        secrets: {api_key: null}
        environment_variables: {GREETING: bonjour}
        model_metadata: {owner: tests}
        runtime: {predict_concurrency: 1}
        """
    )
    pushed = await api.push(api.package("features", source=FEATURES_MODEL, extra_config=config))
    deployment = await api.wait_state(pushed.deployment.id, ACTIVE, timeout=BUILD_TIMEOUT)

    assert await invoke(deployment, {"text": "Hi There"}) == {
        "steps": ["pre", "predict", "post"],
        "slug": "hi-there",
        "secret": "s3cret",
        "visible_secrets": [],  # the replica takes its secrets out of its environment (replica/secrets.py)
        "other_secret_in_process": False,
        "greeting": "bonjour",
        "metadata": {"owner": "tests"},
    }

    # predict_concurrency 1: concurrent calls run one at a time.
    answers = await asyncio.gather(*(invoke(deployment, {"overlap": True}) for _ in range(6)))
    assert max(a["most"] for a in answers) == 1

    # A generator streams one chunk per yield (Truss: no postprocess with a generator).
    streaming = await api.push(api.package("streamer", source=STREAMING_MODEL, extra_config=REQUIREMENTS))
    deployment = await api.wait_state(streaming.deployment.id, ACTIVE, timeout=BUILD_TIMEOUT)
    ready = [rep for rep in deployment.replicas if rep.state == r.REPLICA_STATE_READY]
    async with grpc.aio.insecure_channel(ready[0].address) as channel:
        stream = rs_grpc.ReplicaServiceStub(channel).InvokeStream(
            rs.InvokeStreamRequest(payload=json.dumps({"text": "Ünö Dös"}).encode(), content_type="application/json"),
            timeout=20,
            metadata=replica_metadata(ready[0].id),
        )
        chunks = [message.chunk async for message in stream]
    assert chunks == [b"uno;", b"dos;"]


async def test_external_package_dirs_outside_the_package_are_bundled_at_push(api: Api, tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "shared_lib.py").write_text("GREETING = 'from ../common'\n")
    (tmp_path / "common" / "__pycache__").mkdir()
    (tmp_path / "common" / "__pycache__" / "junk.pyc").write_bytes(b"ignored")
    package = write_package(
        tmp_path / "uses-common",
        "uses-common",
        "from shared_lib import GREETING\n\nclass Model:\n    def predict(self, model_input):\n        return GREETING\n",
        "external_package_dirs: [../common, /nowhere-it-is-not-a-dir]\n",
    )
    with pytest.raises(PackageError, match="/nowhere-it-is-not-a-dir"):
        archive_package(package)
    (package / "config.yaml").write_text("model_name: uses-common\nexternal_package_dirs: [../common]\n")
    assert [name for name, _ in package_entries(package) if name.startswith(".external")] == [
        ".external",
        ".external/0",
        ".external/0/shared_lib.py",
    ]

    pushed = await api.push(package)
    deployment = await api.wait_state(pushed.deployment.id, ACTIVE)
    assert await invoke(deployment, {}) == "from ../common"


async def test_predict_concurrency_above_1_runs_calls_in_parallel(api: Api):
    source = """
    import threading

    class Model:
        def __init__(self, **kwargs):
            self._barrier = threading.Barrier(3, timeout=10)

        def predict(self, model_input):
            self._barrier.wait()  # returns only once 3 calls are inside predict together
            return "together"
    """
    pushed = await api.push(api.package("parallel", source=source, extra_config="runtime: {predict_concurrency: 3}\n"))
    deployment = await api.wait_state(pushed.deployment.id, ACTIVE)
    assert await asyncio.gather(*(invoke(deployment, None) for _ in range(3))) == ["together"] * 3


# --- config.yaml compatibility -------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ("system_packages: [ffmpeg]\n", "system_packages"),
        ("resources: {use_gpu: true}\n", "resources.use_gpu"),
        ("resources: {accelerator: T4}\n", "resources.accelerator"),
        ("base_image: {image: 'nvcr.io/nvidia/pytorch:23.10-py3'}\n", "base_image"),
        ("docker_server: {start_command: vllm serve, server_port: 8000}\n", "docker_server"),
        ("python_version: py27\n", "python_version"),
        ("build_commands: [make weights]\n", "build_commands"),
        ("requirements_file: r.txt\n", "requirements_file"),
    ],
)
async def test_keys_that_cannot_be_honoured_refuse_the_push(api: Api, config: str, key: str):
    package = api.package("m", extra_config=config)
    (package / "r.txt").write_text("-r other.txt\n")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.push(package)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "UNSUPPORTED_PACKAGE_CONFIG"
    assert key in caught.value.details()
    listed = await api.deployments.ListDeployments(ds.ListDeploymentsRequest())
    assert not listed.deployments  # nothing was created


async def test_harmless_keys_are_warned_about_in_the_response_and_the_event_log(api: Api):
    other = "py310" if sys.version_info[:2] != (3, 10) else "py311"
    config = f"python_version: {other}\nfancy_feature: {{enabled: true}}\nruntime: {{enable_tracing_data: true}}\n"
    pushed = await api.push(api.package("m", extra_config=config))
    warnings = list(pushed.warnings)
    assert len(warnings) == 3, warnings
    assert any("python_version" in w and other in w for w in warnings)
    assert any("fancy_feature" in w for w in warnings)
    assert any("runtime.enable_tracing_data" in w for w in warnings)
    history = await events(api, pushed.deployment.id)
    assert sorted(e.message for e in history if e.type == "deployment.config_warning") == sorted(warnings)
    await api.wait_state(pushed.deployment.id, ACTIVE)  # and it deploys


def test_compat_rules(tmp_path):
    machine = compat.Machine(python=(3, 11), cpus=2, memory_bytes=4 * 1024**3)

    def check(raw: dict) -> list[str]:
        (tmp_path / "config.yaml").write_text(json.dumps(raw))
        return compat.check_package(load_package_config(tmp_path), machine)

    scaffold = {
        "model_name": "m",
        "python_version": "py311",
        "requirements": [],
        "system_packages": [],
        "secrets": {},
        "external_package_dirs": [],
        "environment_variables": {},
        "model_metadata": {},
        "description": None,
        "build_commands": [],
        "external_data": None,
        "base_image": None,
        "resources": {"accelerator": None, "cpu": "1", "memory": "2Gi", "use_gpu": False},
        "runtime": {"predict_concurrency": 1, "streaming_read_timeout": None},
        "model_cache": [],
        "build": {"model_server": "TrussServer", "arguments": {}},
        "trt_llm": None,
        "live_reload": False,
        "docker_server": None,
    }
    assert check(scaffold) == []
    warned = check({**scaffold, "resources": {"cpu": "4", "memory": "16Gi"}})
    assert len(warned) == 2 and "resources.cpu" in warned[0] and "resources.memory" in warned[1]
    assert check({**scaffold, "resources": {"cpu": "1500m", "memory": "512Mi"}}) == []
    assert check({**scaffold, "secrets": {"hf_token": "abc"}}) == []  # a default, as in Truss
    [unset] = check({**scaffold, "secrets": {"hf_token": None}})
    assert "secret 'hf_token' is not set (slipway secrets set hf_token)" in unset
    machine = compat.Machine(
        python=(3, 11), cpus=2, memory_bytes=4 * 1024**3, secret_variables=frozenset({"SLIPWAY_SECRET_HF_TOKEN"})
    )
    assert check({**scaffold, "secrets": {"hf_token": None}}) == []
    [not_bundled] = check({**scaffold, "external_package_dirs": ["../common"]})
    assert "'../common' is not in the package" in not_bundled
    with pytest.raises(InvalidArgument) as caught:
        check({**scaffold, "system_packages": ["ffmpeg"], "resources": {"accelerator": "A100:2"}})
    assert caught.value.reason == "UNSUPPORTED_PACKAGE_CONFIG"
    assert caught.value.metadata["keys"] == "system_packages,resources.accelerator"


def test_requirements_file_formats(tmp_path):
    def requirements(config: str, files: dict[str, str]) -> list[str]:
        package = tmp_path / f"p{len(list(tmp_path.iterdir()))}"
        package.mkdir()
        (package / "config.yaml").write_text("model_name: m\n" + config)
        for name, text in files.items():
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            (package / name).write_text(text)
        return read_requirements(load_package_config(package))

    assert requirements("requirements: [a, b==1]\n", {}) == ["a", "b==1"]
    assert requirements("requirements_file: deps/r.txt\n", {"deps/r.txt": "# c\na==1  # x\n\nb \\\n>=2\n--pre\n"}) == [
        "a==1",
        "b >=2",
        "--pre",
    ]
    pyproject = '[project]\nname = "x"\ndependencies = ["six>=1", "attrs"]\n'
    assert requirements("requirements_file: pyproject.toml\n", {"pyproject.toml": pyproject}) == ["six>=1", "attrs"]
    assert requirements("requirements_file: uv.lock\n", {"uv.lock": "", "pyproject.toml": pyproject}) == [
        "six>=1",
        "attrs",
    ]
    with pytest.raises(ValueError, match="missing"):
        requirements("requirements_file: nope.txt\n", {})
    with pytest.raises(ValueError, match="mutually exclusive"):
        requirements("requirements: [a]\nrequirements_file: r.txt\n", {"r.txt": "b\n"})


# --- scaffolds: `slipway init` and Truss's own `truss init` ----------------------------------------


async def test_slipway_init_scaffold_deploys_unmodified(api: Api, tmp_path):
    from slipway.cli import cli

    result = CliRunner().invoke(cli, ["init", "hello-model", "--directory", str(tmp_path / "hello")])
    assert result.exit_code == 0, result.output
    assert sorted(
        p.relative_to(tmp_path / "hello").as_posix() for p in (tmp_path / "hello").rglob("*") if p.is_file()
    ) == [
        "config.yaml",
        "model/__init__.py",
        "model/model.py",
    ]
    again = CliRunner().invoke(cli, ["init", "hello-model", "--directory", str(tmp_path / "hello")])
    assert again.exit_code == 1 and "already exists" in again.output

    pushed = await api.push(tmp_path / "hello")
    assert pushed.model.name == "hello-model" and list(pushed.warnings) == []
    deployment = await api.wait_state(pushed.deployment.id, ACTIVE)
    assert await invoke(deployment, {"text": "abc"}) == {"output": "cba"}


TRUSS_HOME = pathlib.Path(
    os.environ.get("SLIPWAY_TEST_TRUSS_HOME", pathlib.Path.home() / ".cache" / "slipway-test-truss")
)


def truss_executable() -> pathlib.Path:
    """Truss installed with uv into its own cached venv (never into the test environment)."""
    venv = TRUSS_HOME / "venv"
    truss = venv / "bin" / "truss"
    if truss.exists():
        return truss
    try:
        import uv

        uv_bin = uv.find_uv_bin()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"uv is not available to install truss: {exc}")
    TRUSS_HOME.mkdir(parents=True, exist_ok=True)
    staging = TRUSS_HOME / "venv.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        subprocess.run(
            [uv_bin, "venv", "--relocatable", "--python", sys.executable, str(staging)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [uv_bin, "pip", "install", "--python", str(staging / "bin" / "python"), "truss"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"could not install truss from PyPI: {exc.stderr.decode(errors='replace')[-500:]}")
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip("installing truss from PyPI took too long")
    staging.rename(venv)
    return truss


@pytest.mark.timeout(900)
async def test_truss_init_scaffold_deploys_unmodified(api: Api, tmp_path):
    truss = await asyncio.to_thread(truss_executable)
    target = tmp_path / "from-truss"
    result = await asyncio.to_thread(
        subprocess.run,
        [str(truss), "init", "--backend", "TrussServer", "--name", "truss-scaffold", "--non-interactive", str(target)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"truss init failed:\n{result.stdout}\n{result.stderr}"
    assert (target / "config.yaml").is_file() and (target / "model" / "model.py").is_file()

    pushed = await api.push(target)
    assert pushed.model.name == "truss-scaffold"
    assert list(pushed.warnings) == [], "a scaffold must deploy silently"
    deployment = await api.wait_state(pushed.deployment.id, ACTIVE, timeout=BUILD_TIMEOUT)
    assert await invoke(deployment, {"question": 42}) == {"question": 42}  # the scaffold echoes its input


async def test_slipway_push_prints_warnings_and_the_build_failure(api: Api, controller):
    from slipway.cli import cli

    def push(package: pathlib.Path):
        # CliRunner keeps stderr apart (click >= 8.2): warnings and progress go there.
        return CliRunner().invoke(cli, ["--controller", controller.address, "push", str(package), "--timeout", "240"])

    warned = await asyncio.to_thread(push, api.package("w", extra_config="shiny_new_key: 1\n"))
    assert warned.exit_code == 0, warned.output
    assert "Warning: config.yaml key 'shiny_new_key' is not known to this platform and is ignored" in warned.stderr

    failing = api.package("f", extra_config="requirements: [slipway-no-such-package-xyz==9.9]\n")
    failed = await asyncio.to_thread(push, failing)
    assert failed.exit_code == 1
    assert "BUILD_FAILED" in failed.stderr and "slipway-no-such-package-xyz" in failed.stderr
