"""Shared fixtures: a real controller on port 0 with a temporary data directory, real
replica subprocesses, and helpers that write model packages and poll with timeouts."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import pathlib
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pg_server import PostgresServer, Unavailable, find_bin_dir, run_sync

from controller.keys import KeySettings
from controller.reconciler import ReconcilerSettings
from controller.server import Controller, ControllerSettings
from controller.store import default_database_url, open_store
from gateway.native.proxy import find_haproxy
from slipway.internal_auth import REPLICA_TOKEN_HEADER
from slipway.packaging import archive_package
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import replica_service_pb2_grpc as rs_grpc
from slipway.v1 import resources_pb2 as r

# Controllers the tests start as subprocesses (`slipway up`, `slipway controller`) take an
# ephemeral HTTP port rather than the default 7180, which anything else on the machine may hold.
os.environ.setdefault("SLIPWAY_CONTROLLER_HTTP_PORT", "0")

T = TypeVar("T")

ECHO_MODEL = """
class Model:
    def __init__(self, **kwargs):
        self.tag = {tag!r}

    def load(self):
        pass

    def predict(self, model_input):
        return {{"tag": self.tag, "input": model_input}}
"""

FAILING_MODEL = """
class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        raise RuntimeError("weights are missing: {reason}")

    def predict(self, model_input):
        return None
"""


def write_package(root: pathlib.Path, model_name: str, source: str, extra_config: str = "") -> pathlib.Path:
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(f"model_name: {model_name}\n{extra_config}")
    (root / "model" / "model.py").write_text(textwrap.dedent(source))
    return root


async def wait_until(check: Callable[[], Awaitable[T] | T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `check` (sync or async) until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


# Data directories of the controllers tests started, where each replica's token is kept.
DATA_DIRS: set[pathlib.Path] = set()


def replica_metadata(replica_id: str) -> tuple[tuple[str, str], ...]:
    """What a call to the replica must carry: its token, as the controller stored it."""
    for data_dir in DATA_DIRS:
        token_file = data_dir / "run" / f"{replica_id}.token"
        if token_file.exists():
            return ((REPLICA_TOKEN_HEADER, token_file.read_text()),)
    raise AssertionError(f"no token on record for replica {replica_id}")


def error_reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error}"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "slipway.dev"
            return info.reason
    raise AssertionError(f"no ErrorInfo in {error}")


@dataclass
class Api:
    """Stubs over one channel, plus helpers used across tests."""

    channel: grpc.aio.Channel
    deployments: ds_grpc.DeploymentServiceStub
    models: ms_grpc.ModelServiceStub
    tmp: pathlib.Path
    _counter: int = 0

    def package(
        self, model_name: str, tag: str = "v1", source: str | None = None, extra_config: str = ""
    ) -> pathlib.Path:
        self._counter += 1
        return write_package(
            self.tmp / f"pkg{self._counter}", model_name, source or ECHO_MODEL.format(tag=tag), extra_config
        )

    async def push(
        self, directory: pathlib.Path, target=ds.PUSH_TARGET_DEVELOPMENT, name: str = "", request_id: str = ""
    ):
        archive, digest = archive_package(directory)
        return await self.deployments.CreateDeployment(
            ds.CreateDeploymentRequest(
                package_archive=archive,
                package_sha256=digest,
                target=target,
                deployment_name=name,
                request_id=request_id,
            )
        )

    async def get(self, deployment_id: str) -> r.Deployment:
        return (await self.deployments.GetDeployment(ds.GetDeploymentRequest(deployment_id=deployment_id))).deployment

    async def model(self, model_id: str) -> r.Model:
        return (await self.models.GetModel(ms.GetModelRequest(model_id=model_id))).model

    async def wait_state(self, deployment_id: str, state: int, timeout: float = 30.0) -> r.Deployment:
        async def check():
            d = await self.get(deployment_id)
            return d if d.state == state else None

        try:
            return await wait_until(check, timeout, f"{deployment_id} to be {r.DeploymentState.Name(state)}")
        except AssertionError:
            d = await self.get(deployment_id)
            raise AssertionError(
                f"{deployment_id} is {r.DeploymentState.Name(d.state)} ({d.status_message!r}), "
                f"expected {r.DeploymentState.Name(state)}"
            ) from None

    async def wait_production(self, model_id: str, deployment_id: str, timeout: float = 30.0) -> r.Model:
        async def check():
            m = await self.model(model_id)
            return m if m.production_deployment_id == deployment_id else None

        return await wait_until(check, timeout, f"{deployment_id} to become production of {model_id}")

    async def predict(self, deployment: r.Deployment, payload: bytes = b'"hi"') -> bytes:
        ready = [rep for rep in deployment.replicas if rep.state == r.REPLICA_STATE_READY]
        assert ready, f"no ready replica in {deployment}"
        async with grpc.aio.insecure_channel(ready[0].address) as channel:
            response = await rs_grpc.ReplicaServiceStub(channel).Invoke(
                rs.InvokeRequest(payload=payload, content_type="application/json"),
                timeout=10,
                metadata=replica_metadata(ready[0].id),
            )
        return response.payload


async def stop_or_explain(stopping: Awaitable[None], what: str, timeout: float = 60.0) -> None:
    """Await a shutdown; if it hangs, fail with what every pending task is waiting on."""
    task = asyncio.ensure_future(stopping)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        return task.result()
    chains = "\n".join(f"{t.get_name()}: {' -> '.join(_await_chain(t.get_coro()))}" for t in asyncio.all_tasks())
    task.cancel()
    raise AssertionError(f"{what} did not stop within {timeout}s; pending tasks:\n{chains}")


def _await_chain(awaitable) -> list[str]:
    """Where a coroutine is suspended, through every coroutine it awaits."""
    chain = []
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        if frame is None:
            chain.append(repr(awaitable)[:120])
            break
        chain.append(f"{frame.f_code.co_name} ({pathlib.Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
    return chain


def controller_settings(data_dir: pathlib.Path, **overrides) -> ControllerSettings:
    """Settings for a test controller; without API keys unless `keys=` says otherwise (the
    tests of keys and scopes are in test_api_keys.py)."""
    DATA_DIRS.add(data_dir)
    overrides.setdefault("keys", KeySettings(require_api_keys=False))
    return ControllerSettings(
        data_dir=data_dir,
        port=0,
        http_port=overrides.pop("http_port", 0),
        drain_seconds=5,
        shutdown_grace_seconds=2,
        reconciler=ReconcilerSettings(interval_seconds=0.2, crash_backoff_seconds=0.1),
        **overrides,
    )


# --- the two store backends -----------------------------------------------------------
#
# Modules marked `pytestmark = pytest.mark.both_backends` run every test that starts a
# controller (through the `database` fixture) twice: on SQLite (the embedded default, in
# the data directory) and on PostgreSQL (one real server per test session, started here,
# and a fresh database per test copied from a migrated template).

BACKENDS = ("sqlite", "postgresql")
TEMPLATE_DATABASE = "slipway_template"
_database_numbers = itertools.count(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "both_backends: run the module's controller tests on SQLite and PostgreSQL")
    config.addinivalue_line(
        "markers", "both_data_planes: run the module's gateway tests on the python and the native data plane"
    )
    config.addinivalue_line(
        "markers",
        "python_plane_only(reason): in a both_data_planes module, a test of the python gateway's own "
        "mechanism that the native plane has no counterpart of (its [native] case is skipped with the reason)",
    )


def pytest_report_header(config):
    bin_dir = find_bin_dir()
    if bin_dir is None:
        postgresql = "postgresql: no initdb/pg_ctl found, so tests on the PostgreSQL backend are SKIPPED"
    else:
        postgresql = f"postgresql: {bin_dir} (both_backends tests run on SQLite and PostgreSQL)"
    unavailable = native_unavailable()
    if unavailable is not None:
        native = f"native data plane: {unavailable}, so its half of the both_data_planes tests is SKIPPED"
    else:
        native = f"native data plane: {find_haproxy()} (both_data_planes tests run on the python and native planes)"
    return [postgresql, native]


def pytest_generate_tests(metafunc):
    backends = metafunc.definition.get_closest_marker("both_backends") and "database" in metafunc.fixturenames
    planes = metafunc.definition.get_closest_marker("both_data_planes") and "data_plane" in metafunc.fixturenames
    python_only = metafunc.definition.get_closest_marker("python_plane_only")
    if python_only is not None:
        # Shown as a skipped [native] case with the reason, so that what the native plane does
        # not cover stays visible in every run.
        native = pytest.mark.skip(reason=f"python data plane only: {python_only.kwargs['reason']}")
    if backends and planes:
        # Not 2 x 2: the native plane runs on SQLite only (the store is the same under both planes).
        cases = [pytest.param(*case, id=id) for case, id in zip(BACKEND_PLANE_CASES, BACKEND_PLANE_IDS, strict=True)]
        if python_only is not None:
            cases[-1] = pytest.param(*BACKEND_PLANE_CASES[-1], id=BACKEND_PLANE_IDS[-1], marks=native)
        metafunc.parametrize(("database", "data_plane"), cases, indirect=True)
    elif backends:
        metafunc.parametrize("database", BACKENDS, indirect=True)
    elif planes:
        cases = ["python", pytest.param("native", marks=native) if python_only is not None else "native"]
        metafunc.parametrize("data_plane", cases, indirect=True)


# --- the two data planes -----------------------------------------------------------------
#
# Modules marked `pytestmark = pytest.mark.both_data_planes` run every test that starts a
# gateway (through the `gateway` fixture, or a starter that takes the `data_plane` fixture
# and passes it on: `start_gateway(controller, data_plane=data_plane)`, `--data-plane` for a
# `slipway gateway` process) twice: on the python data plane (the gateway process forwards
# every request) and on the native one (HAProxy holds the public ports and forwards to ready
# replicas; slipway/data_plane.py). The native half is skipped where haproxy is not installed.
# Where a module is also `both_backends`, the cases are [sqlite], [postgresql] (both on the
# python plane) and [native] (on SQLite).

DATA_PLANES = ("python", "native")
BACKEND_PLANE_CASES = (("sqlite", "python"), ("postgresql", "python"), ("sqlite", "native"))
BACKEND_PLANE_IDS = ("sqlite", "postgresql", "native")
NO_HAPROXY = "no haproxy binary (set SLIPWAY_HAPROXY or put haproxy on PATH)"


def native_unavailable() -> str | None:
    """Why the native data plane cannot run here, or None when it can."""
    return None if find_haproxy() else NO_HAPROXY


def require_data_plane(plane: str) -> str:
    """The plane, or a skip of this case when it cannot run here."""
    assert plane in DATA_PLANES, plane
    if plane == "native" and (reason := native_unavailable()) is not None:
        pytest.skip(f"native data plane half skipped: {reason}")
    return plane


@pytest.fixture(scope="module")
def data_plane(request) -> str:
    """The data plane of the gateways a test starts ("python" unless parametrised). Module
    scoped, so that a module's shared platform fixtures can take it too."""
    return require_data_plane(getattr(request, "param", "python"))


def data_plane_flags(plane: str) -> list[str]:
    """`slipway gateway` flags for a plane (none for python: the default of every version)."""
    return [] if plane == "python" else ["--data-plane", plane]


def haproxy_processes(parent: int) -> list[int]:
    """Pids of the haproxy processes among `parent`'s descendants."""
    found, frontier = [], [parent]
    while frontier:
        pid = frontier.pop()
        for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                frontier.append(child)
                try:
                    if pathlib.Path(f"/proc/{child}/comm").read_text().strip().startswith("haproxy"):
                        found.append(child)
                except OSError:
                    pass
    return found


def routing_metadata(target) -> tuple[tuple[str, str], ...]:
    """The metadata the SDK sends beside a Predict's Target (slipway/data_plane.py), by which
    the native plane routes a gRPC call without reading its message."""
    from slipway import data_plane
    from slipway.v1 import inference_service_pb2 as inf

    metadata = []
    if target.deployment_id:
        metadata.append((data_plane.DEPLOYMENT_HEADER, target.deployment_id))
    if target.model_id:
        metadata.append((data_plane.MODEL_HEADER, target.model_id))
        environment = target.environment_name or (
            "development" if target.environment == inf.ENVIRONMENT_DEVELOPMENT else "production"
        )
        metadata.append((data_plane.ENVIRONMENT_HEADER, environment))
    return tuple(metadata)


def on_python_plane(gateway) -> bool:
    """Whether a gateway forwards requests itself, so that its Python internals (body budget,
    open connections, retry counters) see every request."""
    return gateway.settings.data_plane == "python"


async def wait_native_proxy(parent: int) -> list[int]:
    """Fail unless a gateway on the native plane really runs HAProxy (under `parent`): a
    native case that quietly served on the python plane would prove nothing."""
    return await wait_until(lambda: haproxy_processes(parent), 10, "the native data plane's haproxy")


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session, with the schema migrated into a template."""
    try:
        server = PostgresServer.start()
    except Unavailable as exc:
        pytest.skip(f"PostgreSQL half skipped: {exc}")
    try:
        server.create_database(TEMPLATE_DATABASE)

        async def migrate() -> None:
            await (await open_store(server.url(TEMPLATE_DATABASE))).close()

        run_sync(migrate())
        yield server
    finally:
        server.stop()


def new_database(request: pytest.FixtureRequest, backend: str) -> str:
    """A database URL for one controller: "" (the SQLite default in its data directory), or
    a fresh PostgreSQL database dropped when the requesting fixture's scope ends."""
    if backend == "sqlite":
        return ""
    assert backend == "postgresql", backend
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"test_{os.getpid()}_{next(_database_numbers)}"
    url = server.create_database(name, template=TEMPLATE_DATABASE)
    request.addfinalizer(lambda: server.drop_database(name))
    return url


@pytest.fixture
def database(request) -> str:
    """The database URL of the `controller` fixture (SQLite unless parametrised)."""
    return new_database(request, getattr(request, "param", "sqlite"))


@pytest.fixture
async def stores(database, tmp_path):
    """Two stores on one database, as two controllers have."""
    url = database or default_database_url(tmp_path / "shared")
    opened = [await open_store(url), await open_store(url)]
    yield opened
    for store in opened:
        await store.close()


@pytest.fixture
async def controller(tmp_path, database):
    running = await Controller.start(controller_settings(tmp_path / "data", database=database))
    yield running
    await stop_or_explain(running.stop(), "controller")


@pytest.fixture
async def api(controller, tmp_path):
    async with grpc.aio.insecure_channel(controller.address) as channel:
        yield Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)


async def start_gateway(controller: Controller, **overrides):
    """A gateway on port 0 following the controller, once it has the route table (without
    API keys unless `require_api_keys=True`; on the python data plane unless `data_plane=`)."""
    from gateway.server import Gateway, GatewaySettings

    overrides.setdefault("require_api_keys", False)
    plane = require_data_plane(overrides.setdefault("data_plane", "python"))
    running = await Gateway.start(
        GatewaySettings(
            controller_address=controller.address,
            internal_token=controller.internal_token,
            grpc_port=0,
            http_port=0,
            replica_wait_seconds=10,
            load_report_seconds=0.2,
            shutdown_grace_seconds=2,
            **overrides,
        )
    )
    await asyncio.wait_for(running.follower.synced.wait(), 10)
    if plane == "native":
        try:
            await wait_native_proxy(os.getpid())
        except AssertionError:
            await running.stop()
            raise
    return running


@pytest.fixture
async def gateway(controller, data_plane):
    running = await start_gateway(controller, data_plane=data_plane)
    yield running
    await stop_or_explain(running.stop(), "gateway")
