"""Hypothesis drives random lifecycle sequences against a real controller (real
replicas, real SQLite and real PostgreSQL) and a reference model of DESIGN.md §2, checking the
invariants after every step."""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest
from conftest import BACKENDS, ECHO_MODEL, controller_settings, error_reason, new_database, write_package
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from controller.server import Controller
from slipway.packaging import archive_package
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import environment_service_pb2 as es
from slipway.v1 import environment_service_pb2_grpc as es_grpc
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

MODEL_NAMES = ("alpha", "beta")
NAMES = ("blue", "green", "development", "bad name", "deployment-1")
# Promotion targets: "" is production; "staging" exists only once created.
ENVIRONMENTS = ("", "staging")


class ControllerThread:
    """A real controller serving from its own event loop, for synchronous Hypothesis rules."""

    def __init__(self, data_dir: pathlib.Path, database: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.controller = asyncio.run_coroutine_threadsafe(
            Controller.start(controller_settings(data_dir, database=database)), self.loop
        ).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.controller.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class RefDeployment:
    id: str
    model: str
    name: str
    development: bool
    active: bool = True
    deleted: bool = False


@dataclass
class RefModel:
    id: str
    production: str = ""
    development: str = ""
    deleted: bool = False
    deployments: list[str] = field(default_factory=list)
    # Named environments: name -> the deployment in it ("" for none).
    environments: dict[str, str] = field(default_factory=dict)

    def environment_of(self, deployment_id: str) -> str:
        if deployment_id == self.production:
            return "production"
        return next((name for name, d in self.environments.items() if d == deployment_id), "")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("packages")
    return {
        name: archive_package(write_package(root / name, name, ECHO_MODEL.format(tag=name))) for name in MODEL_NAMES
    }


@pytest.fixture(scope="module", params=BACKENDS)
def running_controller(request, tmp_path_factory):
    thread = ControllerThread(tmp_path_factory.mktemp("stateful") / "data", new_database(request, request.param))
    yield thread.controller
    thread.stop()


def test_lifecycle_state_machine(running_controller, packages):
    channel = grpc.insecure_channel(running_controller.address)
    deployments = ds_grpc.DeploymentServiceStub(channel)
    models = ms_grpc.ModelServiceStub(channel)
    environments = es_grpc.EnvironmentServiceStub(channel)
    # IDs are never reused: remember every ID this controller ever handed out, across examples.
    ids_ever_seen: set[str] = set()

    class Lifecycle(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.models: dict[str, RefModel] = {}  # by model ID
            self.live_by_name: dict[str, str] = {}
            self.deployments: dict[str, RefDeployment] = {}
            self.created_in_example: list[str] = []

        # -- helpers --------------------------------------------------------------
        def live_model(self, name: str) -> RefModel | None:
            model_id = self.live_by_name.get(name)
            return self.models[model_id] if model_id else None

        def expect_refusal(self, call, code: grpc.StatusCode, reason: str) -> None:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == code, caught.value.details()
            assert error_reason(caught.value) == reason

        def record_new(self, model_name: str, response) -> None:
            assert response.deployment.id not in ids_ever_seen, "deployment ID reused"
            ids_ever_seen.add(response.deployment.id)
            model = self.live_model(model_name)
            if model is None:
                assert response.model_created
                assert response.model.id not in ids_ever_seen, "model ID reused"
                ids_ever_seen.add(response.model.id)
                model = self.models[response.model.id] = RefModel(id=response.model.id)
                self.live_by_name[model_name] = model.id
            d = response.deployment
            self.deployments[d.id] = RefDeployment(d.id, model.id, d.name, d.kind == r.DEPLOYMENT_KIND_DEVELOPMENT)
            model.deployments.append(d.id)
            self.created_in_example.append(d.id)

        def wait_promotion(self, model: RefModel) -> None:
            """Until no environment of the model (production included) has a promotion in flight."""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                listed = environments.ListEnvironments(es.ListEnvironmentsRequest(model_id=model.id)).environments
                if not any(e.promoting_deployment_id for e in listed):
                    return
                time.sleep(0.02)
            raise AssertionError(f"promotion on {model.id} did not finish")

        def land(self, model: RefModel, deployment_id: str, environment: str) -> None:
            """The reference's point_environment: the deployment takes `environment` ("" is
            production) and leaves the named one it was in."""
            for name, held in model.environments.items():
                if held == deployment_id:
                    model.environments[name] = ""
            if environment:
                model.environments[environment] = deployment_id
            else:
                model.production = deployment_id

        def pick(self, data, alive_only: bool = False) -> RefDeployment | None:
            candidates = [d for d in self.deployments.values() if not (alive_only and d.deleted)]
            return data.draw(st.sampled_from(candidates)) if candidates else None

        # -- rules ----------------------------------------------------------------
        @rule(model_name=st.sampled_from(MODEL_NAMES), how=st.sampled_from(["dev", "publish", "promote"]))
        def push(self, model_name: str, how: str) -> None:
            archive, digest = packages[model_name]
            proto_target = {
                "dev": ds.PUSH_TARGET_DEVELOPMENT,
                "publish": ds.PUSH_TARGET_PUBLISHED,
                "promote": ds.PUSH_TARGET_PRODUCTION,
            }[how]
            response = deployments.CreateDeployment(
                ds.CreateDeploymentRequest(package_archive=archive, package_sha256=digest, target=proto_target)
            )
            model = self.live_model(model_name)
            if how == "dev" and model and model.development:
                assert response.deployment.id == model.development  # updated in place
                self.deployments[model.development].active = True
                return
            self.record_new(model_name, response)
            model = self.live_model(model_name)
            if how == "dev":
                model.development = response.deployment.id
            elif how == "promote":
                self.wait_promotion(model)
                model.production = response.deployment.id

        @rule(data=st.data(), environment=st.sampled_from(ENVIRONMENTS))
        def promote(self, data, environment: str) -> None:
            target = self.pick(data)
            if target is None:
                return
            model = self.models[target.model]

            def call():
                return deployments.PromoteDeployment(
                    ds.PromoteDeploymentRequest(deployment_id=target.id, environment=environment)
                )

            now_in = model.environment_of(target.id)
            if target.deleted:
                self.expect_refusal(call, grpc.StatusCode.NOT_FOUND, "DEPLOYMENT_DELETED")
            elif environment and environment not in model.environments:
                self.expect_refusal(call, grpc.StatusCode.NOT_FOUND, "ENVIRONMENT_NOT_FOUND")
            elif now_in == (environment or "production"):
                reason = "ALREADY_IN_ENVIRONMENT" if environment else "ALREADY_PRODUCTION"
                self.expect_refusal(call, grpc.StatusCode.FAILED_PRECONDITION, reason)
            elif now_in == "production":
                self.expect_refusal(call, grpc.StatusCode.FAILED_PRECONDITION, "PRODUCTION_DEPLOYMENT_NOT_MOVABLE")
            elif not target.active:
                self.expect_refusal(call, grpc.StatusCode.FAILED_PRECONDITION, "DEPLOYMENT_INACTIVE")
            elif target.development:
                response = call()
                self.deployments[response.deployment.id] = RefDeployment(
                    response.deployment.id, model.id, response.deployment.name, False
                )
                assert response.deployment.id not in ids_ever_seen, "deployment ID reused"
                ids_ever_seen.add(response.deployment.id)
                model.deployments.append(response.deployment.id)
                self.created_in_example.append(response.deployment.id)
                self.wait_promotion(model)
                self.land(model, response.deployment.id, environment)
            else:
                call()
                self.wait_promotion(model)
                self.land(model, target.id, environment)

        @rule(model_name=st.sampled_from(MODEL_NAMES), name=st.sampled_from(("staging", "production")))
        def create_environment(self, model_name: str, name: str) -> None:
            model = self.live_model(model_name)
            if model is None:
                return

            def call():
                return environments.CreateEnvironment(
                    es.CreateEnvironmentRequest(model_id=model.id, environment=es.ModelEnvironment(name=name))
                )

            if name == "production":
                self.expect_refusal(call, grpc.StatusCode.INVALID_ARGUMENT, "RESERVED_ENVIRONMENT_NAME")
            elif name in model.environments:
                self.expect_refusal(call, grpc.StatusCode.ALREADY_EXISTS, "ENVIRONMENT_EXISTS")
            else:
                assert call().environment.deployment_id == ""
                model.environments[name] = ""

        @rule(model_name=st.sampled_from(MODEL_NAMES), name=st.sampled_from(("staging", "production")))
        def delete_environment(self, model_name: str, name: str) -> None:
            model = self.live_model(model_name)
            if model is None:
                return

            def call():
                return environments.DeleteEnvironment(es.DeleteEnvironmentRequest(model_id=model.id, name=name))

            if name == "production":
                self.expect_refusal(call, grpc.StatusCode.FAILED_PRECONDITION, "PRODUCTION_ENVIRONMENT_NOT_DELETABLE")
            elif name not in model.environments:
                self.expect_refusal(call, grpc.StatusCode.NOT_FOUND, "ENVIRONMENT_NOT_FOUND")
            else:
                assert call().environment.deployment_id == model.environments.pop(name)  # it stays published

        @rule(data=st.data(), activate=st.booleans())
        def set_activity(self, data, activate: bool) -> None:
            target = self.pick(data)
            if target is None:
                return
            if activate:

                def call():
                    return deployments.ActivateDeployment(ds.ActivateDeploymentRequest(deployment_id=target.id))
            else:

                def call():
                    return deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=target.id))

            if target.deleted:
                self.expect_refusal(call, grpc.StatusCode.NOT_FOUND, "DEPLOYMENT_DELETED")
                return
            assert call().deployment.active == activate
            target.active = activate

        @rule(data=st.data())
        def delete(self, data) -> None:
            target = self.pick(data)
            if target is None:
                return
            model = self.models[target.model]

            def call():
                return deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=target.id))

            if target.deleted:
                self.expect_refusal(call, grpc.StatusCode.NOT_FOUND, "DEPLOYMENT_DELETED")
            elif model.production == target.id:
                self.expect_refusal(call, grpc.StatusCode.FAILED_PRECONDITION, "PRODUCTION_NOT_DELETABLE")
            elif model.environment_of(target.id):
                self.expect_refusal(call, grpc.StatusCode.FAILED_PRECONDITION, "DEPLOYMENT_IN_ENVIRONMENT")
            else:
                call()
                target.deleted = True
                if model.development == target.id:
                    model.development = ""

        @rule(data=st.data(), name=st.sampled_from(NAMES))
        def rename(self, data, name: str) -> None:
            target = self.pick(data)
            if target is None:
                return
            request = ds.UpdateDeploymentRequest(
                deployment=r.Deployment(id=target.id, name=name), update_mask=field_mask_pb2.FieldMask(paths=["name"])
            )

            def call():
                return deployments.UpdateDeployment(request)

            siblings = {
                self.deployments[i].name
                for i in self.models[target.model].deployments
                if not self.deployments[i].deleted and i != target.id
            }
            if target.deleted:
                self.expect_refusal(call, grpc.StatusCode.NOT_FOUND, "DEPLOYMENT_DELETED")
            elif target.development and name != target.name:
                self.expect_refusal(call, grpc.StatusCode.FAILED_PRECONDITION, "DEVELOPMENT_NOT_RENAMABLE")
            elif name == target.name:  # no change, whatever the deployment
                assert call().deployment.name == name
            elif name == "bad name":
                self.expect_refusal(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DEPLOYMENT_NAME")
            elif name == "development":
                self.expect_refusal(call, grpc.StatusCode.INVALID_ARGUMENT, "RESERVED_DEPLOYMENT_NAME")
            elif name in siblings:
                self.expect_refusal(call, grpc.StatusCode.ALREADY_EXISTS, "DEPLOYMENT_NAME_TAKEN")
            else:
                assert call().deployment.name == name
                target.name = name

        @precondition(lambda self: bool(self.live_by_name))
        @rule(model_name=st.sampled_from(MODEL_NAMES))
        def delete_model(self, model_name: str) -> None:
            model = self.live_model(model_name)
            if model is None:
                return
            models.DeleteModel(ms.DeleteModelRequest(model_id=model.id))
            model.deleted = True
            for deployment_id in model.deployments:
                self.deployments[deployment_id].deleted = True
            del self.live_by_name[model_name]

        # -- invariants -----------------------------------------------------------
        @invariant()
        def controller_matches_reference(self) -> None:
            listed = []
            token = ""
            while True:
                page = deployments.ListDeployments(ds.ListDeploymentsRequest(page_token=token, page_size=50))
                listed += page.deployments
                token = page.next_page_token
                if not token:
                    break
            live = {d.id: d for d in listed}
            expected_live = {d.id for d in self.deployments.values() if not d.deleted}
            assert set(live) - set(ids_ever_seen) == set()
            mine = {i for i in live if i in self.deployments}
            assert mine == expected_live, "listed deployments differ from the reference"
            for deployment_id, deployment in live.items():
                if deployment_id not in self.deployments:
                    continue
                ref = self.deployments[deployment_id]
                assert not deployment.HasField("delete_time")
                assert deployment.name == ref.name
                assert deployment.active == ref.active
                assert deployment.environment == self.models[ref.model].environment_of(ref.id)
                if ref.development:
                    assert deployment.name == "development"
            for ref_model in self.models.values():
                if ref_model.deleted:
                    with pytest.raises(grpc.RpcError) as caught:
                        models.GetModel(ms.GetModelRequest(model_id=ref_model.id))
                    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
                    continue
                model = models.GetModel(ms.GetModelRequest(model_id=ref_model.id)).model
                assert model.production_deployment_id == ref_model.production
                assert model.development_deployment_id == ref_model.development
                productions = [d for d in listed if d.model_id == model.id and d.is_production]
                assert len(productions) == (1 if ref_model.production else 0)
                held = environments.ListEnvironments(es.ListEnvironmentsRequest(model_id=model.id)).environments
                assert {e.name: e.deployment_id for e in held} == {
                    "production": ref_model.production,
                    **ref_model.environments,
                }
            for ref in self.deployments.values():
                if ref.deleted:
                    with pytest.raises(grpc.RpcError) as caught:
                        deployments.GetDeployment(ds.GetDeploymentRequest(deployment_id=ref.id))
                    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        def teardown(self) -> None:
            # Usage is kept for every deployment ever created, deleted ones included.
            usage, token = set(), ""
            while True:
                page = deployments.ListUsageRecords(ds.ListUsageRecordsRequest(page_token=token, page_size=200))
                usage |= {u.deployment_id for u in page.usage_records}
                token = page.next_page_token
                if not token:
                    break
            assert set(self.created_in_example) <= usage
            for model in self.models.values():
                if not model.deleted:
                    models.DeleteModel(ms.DeleteModelRequest(model_id=model.id))

    Lifecycle.TestCase.settings = settings(
        max_examples=20,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    try:
        Lifecycle.TestCase().runTest()
    finally:
        channel.close()
