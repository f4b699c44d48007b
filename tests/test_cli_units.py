"""Unit tests of the CLI and SDK that need no controller.

Packaging and rendering are tested directly; commands run through click's CliRunner,
either failing before any call, or against a small in-process fake of the API (a
real gRPC server on port 0 with scripted answers) to check what the CLI sends and
how it reports answers and refusals.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from slipway import cli as slipway_cli
from slipway.cli import cli
from slipway.client import SlipwayClient, error_reason, format_rpc_error, is_serving
from slipway.packaging import PackageError, archive_package, read_model_name
from slipway.render import DEPLOYMENT_COLUMNS, render_table, table
from slipway.v1 import (
    deployment_service_pb2 as ds,
)
from slipway.v1 import (
    deployment_service_pb2_grpc,
    model_service_pb2_grpc,
    replica_service_pb2_grpc,
)
from slipway.v1 import (
    model_service_pb2 as ms,
)
from slipway.v1 import (
    replica_service_pb2 as rs,
)
from slipway.v1 import (
    resources_pb2 as res,
)

# --- packaging ------------------------------------------------------------------------


def make_package(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "config.yaml").write_text("model_name: echo\nrequirements: []\n")
    (root / "model" / "__init__.py").write_text("")
    (root / "model" / "model.py").write_text("class Model:\n    def predict(self, x):\n        return x\n")
    return root


def archive_names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.getnames()


def test_archive_is_deterministic_across_copies_and_times(tmp_path: Path) -> None:
    package = make_package(tmp_path / "a")
    first, digest = archive_package(package)
    assert archive_package(package) == (first, digest)

    copy = tmp_path / "b"
    shutil.copytree(package, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    assert archive_package(copy)[1] == digest

    assert first[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["config.yaml", "model", "model/__init__.py", "model/model.py"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)


def test_archive_changes_when_a_file_changes(tmp_path: Path) -> None:
    package = make_package(tmp_path / "p")
    _, before = archive_package(package)
    (package / "model" / "model.py").write_text("class Model:\n    pass\n")
    _, after = archive_package(package)
    assert before != after


def test_archive_skips_caches_git_and_ignored_entries(tmp_path: Path) -> None:
    package = make_package(tmp_path / "p")
    _, clean = archive_package(package)
    (package / "model" / "__pycache__").mkdir()
    (package / "model" / "__pycache__" / "model.cpython-312.pyc").write_bytes(b"x")
    (package / "stale.pyc").write_bytes(b"x")
    (package / ".git").mkdir()
    (package / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert archive_package(package)[1] == clean

    (package / ".slipwayignore").write_text("# local junk\n*.log\ndata/\n/secret.txt\n")
    (package / ".trussignore").write_text("notes.md\n")
    (package / "run.log").write_text("x")
    (package / "model" / "debug.log").write_text("x")
    (package / "data").mkdir()
    (package / "data" / "big.bin").write_bytes(b"x")
    (package / "secret.txt").write_text("x")
    (package / "model" / "secret.txt").write_text("kept: the pattern is anchored")
    (package / "notes.md").write_text("x")
    names = archive_names(archive_package(package)[0])
    assert names == [
        ".slipwayignore",
        ".trussignore",
        "config.yaml",
        "model",
        "model/__init__.py",
        "model/model.py",
        "model/secret.txt",
    ]


def test_package_errors_and_model_name(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="config.yaml"):
        archive_package(tmp_path)
    with pytest.raises(PackageError, match="not a directory"):
        archive_package(tmp_path / "missing")
    assert read_model_name(make_package(tmp_path / "p")) == "echo"


# --- rendering and errors ---------------------------------------------------------------


def test_render_table_aligns_columns_without_trailing_blanks() -> None:
    text = render_table(["ID", "STATE", "NOTE"], [["d-1", "ACTIVE", ""], ["deployment-10", "SCALED_TO_ZERO", "x"]])
    assert text.splitlines() == [
        "ID             STATE           NOTE",
        "d-1            ACTIVE",
        "deployment-10  SCALED_TO_ZERO  x",
    ]


def test_deployment_table_shows_short_state_names() -> None:
    deployment = res.Deployment(
        id="dep1",
        model_id="m1",
        name="deployment-1",
        kind=res.DEPLOYMENT_KIND_PUBLISHED,
        is_production=True,
        active=True,
        state=res.DEPLOYMENT_STATE_SCALED_TO_ZERO,
    )
    header, row = table(DEPLOYMENT_COLUMNS, "none")([deployment]).splitlines()
    assert header.split() == ["ID", "MODEL", "NAME", "KIND", "PROD", "STATE", "ACTIVE", "REPLICAS", "REV", "CREATED"]
    assert row.split() == ["dep1", "m1", "deployment-1", "published", "*", "SCALED_TO_ZERO", "yes", "0/0", "0"]
    assert table(DEPLOYMENT_COLUMNS, "No deployments.")([]) == "No deployments."


class PlainError(grpc.RpcError, grpc.Call):
    """An RpcError without rich status details."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


def test_format_rpc_error_without_reason() -> None:
    err = PlainError(grpc.StatusCode.UNAVAILABLE, "failed to connect\n to all addresses")
    assert format_rpc_error(err) == "UNAVAILABLE: failed to connect to all addresses"
    assert error_reason(err) == ""


def test_is_serving_ignores_replicas_of_an_older_revision() -> None:
    def deployment(replica_revision: int) -> res.Deployment:
        return res.Deployment(
            state=res.DEPLOYMENT_STATE_ACTIVE,
            revision=2,
            replicas=[res.Replica(address="h:1", state=res.REPLICA_STATE_READY, revision=replica_revision)],
        )

    assert not is_serving(deployment(1))
    assert is_serving(deployment(2))
    assert not is_serving(res.Deployment(state=res.DEPLOYMENT_STATE_DEPLOYING))


# --- argument validation (no server) ----------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        (["push", "--publish", "--promote"], "mutually exclusive"),
        (["push", "--deployment-name", "x"], "needs --publish or --promote"),
        (["predict", "m", "{not json"], "not valid JSON"),
        (["events", "--limit", "0"], "--limit"),
        (["deployments", "get"], "Missing argument"),
        (["push", "--output", "yaml"], "--output"),
    ],
)
def test_usage_errors(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_push_of_a_directory_without_config_fails_cleanly(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["--controller", "127.0.0.1:1", "push", str(tmp_path)])
    assert result.exit_code == 1
    assert "no config.yaml" in result.stderr


def test_unreachable_controller_is_one_readable_line(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--controller", "127.0.0.1:1", "models", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: UNAVAILABLE: ")
    assert len(result.stderr.strip().splitlines()) == 1


# --- against a fake API ------------------------------------------------------------------------


def refuse(context: grpc.ServicerContext, code: int, reason: str, message: str) -> None:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="slipway.dev"))
    context.abort_with_status(rpc_status.to_status(status_pb2.Status(code=code, message=message, details=[detail])))


class FakeApi(model_service_pb2_grpc.ModelServiceServicer, deployment_service_pb2_grpc.DeploymentServiceServicer):
    """Scripted answers; records the requests it receives."""

    def __init__(self) -> None:
        self.requests: list[object] = []
        self.watch_states: list[tuple[int, str]] = []
        self.replica_address = ""
        self.model = res.Model(id="m1", name="echo", production_deployment_id="dep1")
        self.created = self.deployment(id="dep9", name="development", kind=res.DEPLOYMENT_KIND_DEVELOPMENT)

    def deployment(self, **fields: object) -> res.Deployment:
        base = dict(id="dep1", model_id="m1", name="deployment-1", kind=res.DEPLOYMENT_KIND_PUBLISHED)
        base.update(fields)
        return res.Deployment(**base)

    def GetModel(self, request, context):
        self.requests.append(request)
        if request.model_id not in ("m1", "echo"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_id} not found")
        return ms.GetModelResponse(model=self.model)

    def ListDeployments(self, request, context):
        self.requests.append(request)
        if not request.page_token:
            return ds.ListDeploymentsResponse(deployments=[self.deployment()], next_page_token="p2")
        return ds.ListDeploymentsResponse(deployments=[self.deployment(id="dep2", name="development")])

    def GetDeployment(self, request, context):
        self.requests.append(request)
        replicas = [res.Replica(id="r1", address=self.replica_address, state=res.REPLICA_STATE_READY, revision=1)]
        return ds.GetDeploymentResponse(
            deployment=self.deployment(
                id=request.deployment_id,
                state=res.DEPLOYMENT_STATE_ACTIVE,
                revision=1,
                replicas=replicas if self.replica_address else [],
            )
        )

    def DeleteDeployment(self, request, context):
        self.requests.append(request)
        refuse(
            context,
            code_pb2.FAILED_PRECONDITION,
            "PRODUCTION_NOT_DELETABLE",
            f"deployment {request.deployment_id} is the production deployment of model m1",
        )

    def UpdateDeployment(self, request, context):
        self.requests.append(request)
        return ds.UpdateDeploymentResponse(deployment=request.deployment)

    def CreateDeployment(self, request, context):
        self.requests.append(request)
        return ds.CreateDeploymentResponse(model=self.model, deployment=self.created, model_created=True)

    def WatchDeployments(self, request, context):
        self.requests.append(request)
        for i, (state, message) in enumerate(self.watch_states):
            deployment = res.Deployment()
            deployment.CopyFrom(self.created)
            deployment.state, deployment.status_message = state, message
            yield ds.WatchDeploymentsResponse(deployment=deployment, initial=i == 0)


class EchoReplica(replica_service_pb2_grpc.ReplicaServiceServicer):
    def Invoke(self, request, context):
        return rs.InvokeResponse(payload=b'{"echo": ' + request.payload + b"}", content_type=request.content_type)

    def InvokeStream(self, request, context):
        for word in json.loads(request.payload)["text"].split():
            yield rs.InvokeStreamResponse(chunk=word.encode() + b" ")


@pytest.fixture
def fake() -> FakeApi:
    api = FakeApi()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(api, server)
    deployment_service_pb2_grpc.add_DeploymentServiceServicer_to_server(api, server)
    replica_service_pb2_grpc.add_ReplicaServiceServicer_to_server(EchoReplica(), server)
    api.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield api
    server.stop(None)


def run(runner: CliRunner, fake: FakeApi, *args: str, **kwargs: object):
    return runner.invoke(cli, ["--controller", fake.address, *args], **kwargs)


def test_refusal_prints_code_reason_and_message(runner: CliRunner, fake: FakeApi) -> None:
    result = run(runner, fake, "deployments", "delete", "dep1", "--yes")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: FAILED_PRECONDITION (PRODUCTION_NOT_DELETABLE): "
        "deployment dep1 is the production deployment of model m1\n"
    )
    with SlipwayClient(fake.address) as client, pytest.raises(grpc.RpcError) as caught:
        client.delete_deployment("dep1")
    assert error_reason(caught.value) == "PRODUCTION_NOT_DELETABLE"


def test_delete_without_yes_asks_and_aborts(runner: CliRunner, fake: FakeApi) -> None:
    result = run(runner, fake, "deployments", "delete", "dep1", input="n\n")
    assert result.exit_code == 1
    assert not any(isinstance(r, ds.DeleteDeploymentRequest) for r in fake.requests)


def test_list_follows_pages_and_resolves_model_names(runner: CliRunner, fake: FakeApi) -> None:
    result = run(runner, fake, "deployments", "list", "--model", "echo", "--output", "json")
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [d["id"] for d in listed] == ["dep1", "dep2"]
    assert listed[0]["state"] == "DEPLOYMENT_STATE_UNSPECIFIED" and listed[0]["is_production"] is False
    lists = [r for r in fake.requests if isinstance(r, ds.ListDeploymentsRequest)]
    assert [(r.model_id, r.page_token) for r in lists] == [("m1", ""), ("m1", "p2")]

    table_result = run(runner, fake, "deployments", "list")
    assert table_result.stdout.splitlines()[0].startswith("ID")
    assert len(table_result.stdout.splitlines()) == 3


def test_autoscaling_sends_only_the_given_fields(runner: CliRunner, fake: FakeApi) -> None:
    result = run(runner, fake, "deployments", "autoscaling", "dep1", "--max-replica", "3", "--scale-down-delay", "0")
    assert result.exit_code == 0, result.stderr
    (update,) = [r for r in fake.requests if isinstance(r, ds.UpdateDeploymentRequest)]
    assert sorted(update.update_mask.paths) == [
        "autoscaling_settings.max_replica",
        "autoscaling_settings.scale_down_delay",
    ]
    assert update.deployment.id == "dep1" and update.deployment.autoscaling_settings.max_replica == 3
    assert "max_replica:" in result.stdout

    shown = run(runner, fake, "deployments", "autoscaling", "dep1", "-o", "json")
    assert shown.exit_code == 0 and "min_replica" in json.loads(shown.stdout)
    assert len([r for r in fake.requests if isinstance(r, ds.UpdateDeploymentRequest)]) == 1


def test_rename_uses_the_name_mask(runner: CliRunner, fake: FakeApi) -> None:
    assert run(runner, fake, "deployments", "rename", "dep1", "v2").exit_code == 0
    (update,) = [r for r in fake.requests if isinstance(r, ds.UpdateDeploymentRequest)]
    assert list(update.update_mask.paths) == ["name"] and update.deployment.name == "v2"


def test_push_waits_and_prints_each_state_change(runner: CliRunner, fake: FakeApi, tmp_path: Path) -> None:
    package = make_package(tmp_path / "p")
    fake.watch_states = [
        (res.DEPLOYMENT_STATE_BUILDING, ""),
        (res.DEPLOYMENT_STATE_DEPLOYING, ""),
        (res.DEPLOYMENT_STATE_DEPLOYING, ""),
        (res.DEPLOYMENT_STATE_ACTIVE, ""),
    ]
    result = run(runner, fake, "push", str(package), "--request-id", "abc")
    assert result.exit_code == 0, result.stderr
    (create,) = [r for r in fake.requests if isinstance(r, ds.CreateDeploymentRequest)]
    assert create.target == ds.PUSH_TARGET_DEVELOPMENT and create.request_id == "abc"
    assert create.package_sha256 == archive_package(package)[1]
    progress = [line.split()[2] for line in result.stderr.splitlines() if line.startswith("  [")]
    assert progress == ["BUILDING", "DEPLOYING", "ACTIVE"]
    assert "Deployment development (dep9)" in result.stdout
    assert "slipway predict echo --deployment development" in result.stdout


def test_push_reports_a_failed_deployment(runner: CliRunner, fake: FakeApi, tmp_path: Path) -> None:
    fake.watch_states = [
        (res.DEPLOYMENT_STATE_LOADING_MODEL, ""),
        (res.DEPLOYMENT_STATE_DEPLOY_FAILED, "load() raised ValueError: boom"),
    ]
    result = run(runner, fake, "push", str(make_package(tmp_path / "p")), "--publish")
    assert result.exit_code == 1
    assert "DEPLOY_FAILED: load() raised ValueError: boom" in result.stderr
    (create,) = [r for r in fake.requests if isinstance(r, ds.CreateDeploymentRequest)]
    assert create.target == ds.PUSH_TARGET_PUBLISHED


def test_python_dash_m_entry_point_exists() -> None:
    assert Path(slipway_cli.__file__).with_name("__main__.py").read_text().strip().endswith("main()")
