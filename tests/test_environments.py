"""Environments (controller/environments.py, controller/promotion.py) through the real gRPC API
with real replicas: production always exists, named ones are created and deleted, each has its
own autoscaling that a deployment promoted from development takes, the seed's promotion rules
hold in every environment, a deployment is in at most one, and every refusal changes nothing."""

from __future__ import annotations

import json

import grpc
import pytest
from conftest import FAILING_MODEL, Api, wait_until
from google.protobuf import field_mask_pb2
from test_lifecycle import GATED_MODEL, active, refused, update_request

from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import environment_service_pb2 as es
from slipway.v1 import environment_service_pb2_grpc as es_grpc
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import resources_pb2 as r

pytestmark = pytest.mark.both_backends

DEFAULTS = r.AutoscalingSettings(
    min_replica=0,
    max_replica=1,
    autoscaling_window=60,
    scale_down_delay=900,
    concurrency_target=1,
    target_utilization_percentage=70,
)
ENVIRONMENT_MODEL = """
class Model:
    def __init__(self, **kwargs):
        self.environment = kwargs["environment"]

    def load(self):
        pass

    def predict(self, model_input):
        return {"environment": self.environment}
"""


@pytest.fixture
def envs(api: Api) -> es_grpc.EnvironmentServiceStub:
    return es_grpc.EnvironmentServiceStub(api.channel)


async def create(envs, model_id: str, name: str, request_id: str = "", **settings) -> es.ModelEnvironment:
    response = await envs.CreateEnvironment(
        es.CreateEnvironmentRequest(
            model_id=model_id,
            environment=es.ModelEnvironment(name=name, autoscaling_settings=r.AutoscalingSettings(**settings)),
            request_id=request_id,
        )
    )
    return response.environment


async def get(envs, model_id: str, name: str) -> es.ModelEnvironment:
    return (await envs.GetEnvironment(es.GetEnvironmentRequest(model_id=model_id, name=name))).environment


async def names(envs, model_id: str) -> list[str]:
    listed = await envs.ListEnvironments(es.ListEnvironmentsRequest(model_id=model_id))
    return [e.name for e in listed.environments]


async def promote(api: Api, deployment_id: str, environment: str = "") -> ds.PromoteDeploymentResponse:
    return await api.deployments.PromoteDeployment(
        ds.PromoteDeploymentRequest(deployment_id=deployment_id, environment=environment)
    )


async def wait_environment(envs, model_id: str, name: str, deployment_id: str) -> es.ModelEnvironment:
    async def check():
        environment = await get(envs, model_id, name)
        return environment if environment.deployment_id == deployment_id else None

    return await wait_until(check, what=f"{deployment_id} to become the {name} deployment")


async def state_of(api: Api, envs, model_id: str):
    """Everything a refused call must leave unchanged: environments and deployments."""
    listed = await envs.ListEnvironments(es.ListEnvironmentsRequest(model_id=model_id))
    deployments = await api.deployments.ListDeployments(ds.ListDeploymentsRequest(model_id=model_id, show_deleted=True))
    return (
        [(e.name, e.deployment_id, e.promoting_deployment_id, e.autoscaling_settings) for e in listed.environments],
        [
            (d.id, d.name, d.active, d.delete_time.seconds, d.environment, d.autoscaling_settings)
            for d in deployments.deployments
        ],
    )


async def test_production_always_exists_and_names_are_checked(api: Api, envs):
    dev = await api.push(api.package("m"))
    production = await get(envs, "m", "production")
    assert (production.model_id, production.deployment_id, production.autoscaling_settings) == (
        dev.model.id,
        "",
        DEFAULTS,
    )
    staging = await create(envs, "m", "staging", max_replica=3, concurrency_target=2)
    expected = r.AutoscalingSettings()
    expected.CopyFrom(DEFAULTS)
    expected.max_replica, expected.concurrency_target = 3, 2
    assert staging.deployment_id == "" and staging.autoscaling_settings == expected
    assert await names(envs, "m") == ["production", "staging"]
    before = await state_of(api, envs, dev.model.id)

    await refused(
        envs.DeleteEnvironment(es.DeleteEnvironmentRequest(model_id="m", name="production")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PRODUCTION_ENVIRONMENT_NOT_DELETABLE",
    )
    for name, code, reason in (
        ("production", grpc.StatusCode.INVALID_ARGUMENT, "RESERVED_ENVIRONMENT_NAME"),
        ("development", grpc.StatusCode.INVALID_ARGUMENT, "RESERVED_ENVIRONMENT_NAME"),
        ("Staging", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENVIRONMENT_NAME"),
        ("a_b", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENVIRONMENT_NAME"),
        ("x" * 33, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENVIRONMENT_NAME"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENVIRONMENT_NAME"),
        ("staging\n", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENVIRONMENT_NAME"),
        ("staging", grpc.StatusCode.ALREADY_EXISTS, "ENVIRONMENT_EXISTS"),
    ):
        await refused(create(envs, "m", name), code, reason)
    await refused(
        create(envs, "m", "qa", max_replica=100_000), grpc.StatusCode.INVALID_ARGUMENT, "AUTOSCALING_OUT_OF_RANGE"
    )
    await refused(create(envs, "nope", "qa"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    await refused(get(envs, "m", "qa"), grpc.StatusCode.NOT_FOUND, "ENVIRONMENT_NOT_FOUND")
    assert await state_of(api, envs, dev.model.id) == before

    # At most 32 besides production.
    for n in range(30):
        await create(envs, "m", f"env-{n}")
    first = await create(envs, "m", "env-31", request_id="create-1")
    await refused(create(envs, "m", "one-too-many"), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ENVIRONMENTS")
    assert await create(envs, "m", "env-31", request_id="create-1") == first  # a retry: answered, not refused
    page = await envs.ListEnvironments(es.ListEnvironmentsRequest(model_id="m", page_size=20))
    rest = await envs.ListEnvironments(
        es.ListEnvironmentsRequest(model_id="m", page_size=20, page_token=page.next_page_token)
    )
    assert [e.name for e in page.environments][:2] == ["production", "staging"]
    assert len(page.environments) + len(rest.environments) == 33 and not rest.next_page_token

    # A request_id applies once; reused for another request it is refused.
    await envs.DeleteEnvironment(es.DeleteEnvironmentRequest(model_id="m", name="env-0", request_id="del-1"))
    retried = await envs.DeleteEnvironment(es.DeleteEnvironmentRequest(model_id="m", name="env-0", request_id="del-1"))
    assert retried.environment.name == "env-0" and retried.environment.HasField("delete_time")
    await refused(
        envs.DeleteEnvironment(es.DeleteEnvironmentRequest(model_id="m", name="env-1", request_id="del-1")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    # A deleted name can be created again; deleting the model deletes its environments.
    await create(envs, "m", "env-0")
    await api.models.DeleteModel(ms.DeleteModelRequest(model_id=dev.model.id))
    await refused(get(envs, dev.model.id, "staging"), grpc.StatusCode.NOT_FOUND, "MODEL_DELETED")


async def test_promoting_development_into_an_environment_creates_a_deployment_with_its_settings(
    api: Api, envs, tmp_path
):
    gate = tmp_path / "gate"
    dev = await api.push(api.package("m", source=GATED_MODEL.format(gate=str(gate))))
    gate.touch()
    await active(api, dev)
    dev_before = await api.get(dev.deployment.id)
    await create(envs, "m", "staging", max_replica=3, concurrency_target=2)
    gate.unlink()

    promoted = await promote(api, dev.deployment.id, "staging")
    new = promoted.deployment
    assert not promoted.completed
    assert new.id != dev.deployment.id and new.kind == r.DEPLOYMENT_KIND_PUBLISHED
    assert new.source_deployment_id == dev.deployment.id
    assert (new.environment, new.promoting_environment) == ("", "staging")
    assert (new.autoscaling_settings.max_replica, new.autoscaling_settings.concurrency_target) == (3, 2)
    staging = await get(envs, "m", "staging")
    assert (staging.deployment_id, staging.promoting_deployment_id) == ("", new.id)

    # At most one promotion in flight per (model, environment): staging is busy, production is not.
    before = await state_of(api, envs, dev.model.id)
    await refused(promote(api, dev.deployment.id, "staging"), grpc.StatusCode.ABORTED, "PROMOTION_IN_PROGRESS")
    await refused(
        api.deployments.CreateDeployment(
            ds.CreateDeploymentRequest(target=ds.PUSH_TARGET_PRODUCTION, environment="staging", **_archive(api))
        ),
        grpc.StatusCode.ABORTED,
        "PROMOTION_IN_PROGRESS",
    )
    await refused(
        envs.UpdateEnvironment(
            es.UpdateEnvironmentRequest(
                environment=es.ModelEnvironment(
                    model_id="m", name="staging", autoscaling_settings=r.AutoscalingSettings(max_replica=2)
                )
            )
        ),
        grpc.StatusCode.ABORTED,
        "PROMOTION_IN_PROGRESS",
    )
    # The candidate is bound to staging: it cannot be promoted elsewhere meanwhile.
    await refused(promote(api, new.id), grpc.StatusCode.ABORTED, "DEPLOYMENT_PROMOTING_ELSEWHERE")
    assert await state_of(api, envs, dev.model.id) == before
    into_production = await promote(api, dev.deployment.id)
    assert into_production.deployment.promoting_environment == "production"

    gate.touch()
    staging = await wait_environment(envs, "m", "staging", new.id)
    assert staging.promoting_deployment_id == "" and staging.autoscaling_settings == new.autoscaling_settings
    landed = await api.get(new.id)
    assert (landed.environment, landed.promoting_environment, landed.is_production) == ("staging", "", False)
    await api.wait_production(dev.model.id, into_production.deployment.id)
    dev_after = await api.get(dev.deployment.id)
    assert (dev_after.id, dev_after.active, dev_after.autoscaling_settings, dev_after.environment) == (
        dev_before.id,
        dev_before.active,
        dev_before.autoscaling_settings,
        "",
    )
    # The events say which environment they concern, and can be listed by it.
    events = await api.deployments.ListEvents(ds.ListEventsRequest(model_id="m", environment="staging"))
    kinds = [(e.type, e.deployment_id) for e in events.events]
    assert ("environment.created", "") in kinds
    assert ("model.promotion_started", new.id) in kinds
    assert ("environment.deployment_changed", new.id) in kinds
    assert all(e.environment == "staging" for e in events.events)
    assert not any(e.type == "model.production_changed" for e in events.events)


def _archive(api: Api) -> dict:
    from slipway.packaging import archive_package

    archive, digest = archive_package(api.package("m"))
    return {"package_archive": archive, "package_sha256": digest}


async def test_a_published_deployment_keeps_its_id_and_settings_and_the_demoted_one_keeps_its_own(api: Api, envs):
    await api.push(api.package("m"))
    await create(envs, "m", "staging")
    a = await api.push(api.package("m", tag="a"), target=ds.PUSH_TARGET_PUBLISHED)
    await active(api, a)
    await api.deployments.UpdateDeployment(
        update_request(a.deployment.id, "autoscaling_settings.max_replica", max_replica=2)
    )
    switched = await promote(api, a.deployment.id, "staging")
    assert switched.completed and switched.deployment.id == a.deployment.id
    assert switched.deployment.environment == "staging" and not switched.deployment.is_production
    staging = await get(envs, "m", "staging")
    assert staging.deployment_id == a.deployment.id and staging.autoscaling_settings.max_replica == 2
    # Its settings are the environment's: a change to one is a change to the other.
    await api.deployments.UpdateDeployment(
        update_request(a.deployment.id, "autoscaling_settings.max_replica", max_replica=4)
    )
    assert (await get(envs, "m", "staging")).autoscaling_settings.max_replica == 4
    await envs.UpdateEnvironment(
        es.UpdateEnvironmentRequest(
            environment=es.ModelEnvironment(
                model_id="m", name="staging", autoscaling_settings=r.AutoscalingSettings(scale_down_delay=0)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["autoscaling_settings.scale_down_delay"]),
        )
    )
    a_now = await api.get(a.deployment.id)
    assert (a_now.autoscaling_settings.max_replica, a_now.autoscaling_settings.scale_down_delay) == (4, 0)
    for request, reason in (
        (es.UpdateEnvironmentRequest(environment=es.ModelEnvironment(model_id="m", name="staging")), "EMPTY_UPDATE"),
        (
            es.UpdateEnvironmentRequest(
                environment=es.ModelEnvironment(model_id="m", name="staging"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            "INVALID_UPDATE_MASK",
        ),
        (
            es.UpdateEnvironmentRequest(
                environment=es.ModelEnvironment(
                    model_id="m", name="staging", autoscaling_settings=r.AutoscalingSettings(max_replica=0)
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["autoscaling_settings.max_replica"]),
            ),
            "AUTOSCALING_OUT_OF_RANGE",
        ),
    ):
        await refused(envs.UpdateEnvironment(request), grpc.StatusCode.INVALID_ARGUMENT, reason)

    # A deployment in an environment cannot be deleted; deactivated, it stays the environment's.
    await refused(
        api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=a.deployment.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "DEPLOYMENT_IN_ENVIRONMENT",
    )
    await api.deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=a.deployment.id))
    assert (await get(envs, "m", "staging")).deployment_id == a.deployment.id

    b = await api.push(api.package("m", tag="b"), target=ds.PUSH_TARGET_PUBLISHED)
    await active(api, b)
    b_settings = (await api.get(b.deployment.id)).autoscaling_settings
    assert (await promote(api, b.deployment.id, "staging")).completed
    demoted = await api.get(a.deployment.id)
    assert (demoted.id, demoted.active, demoted.environment) == (a.deployment.id, False, "")
    assert demoted.autoscaling_settings == a_now.autoscaling_settings
    assert (await get(envs, "m", "staging")).autoscaling_settings == b_settings
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=a.deployment.id))

    # Usage records name the environment a deployment is in.
    usage = await api.deployments.ListUsageRecords(ds.ListUsageRecordsRequest(model_id="m"))
    assert {u.deployment_id: u.environment for u in usage.usage_records}[b.deployment.id] == "staging"


async def test_a_deployment_is_in_at_most_one_environment(api: Api, envs):
    prod = await api.push(api.package("m", tag="p"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(prod.model.id, prod.deployment.id)
    await create(envs, "m", "staging")
    await create(envs, "m", "qa")
    s = await api.push(api.package("m", tag="s"), target=ds.PUSH_TARGET_PUBLISHED)
    await active(api, s)
    await promote(api, s.deployment.id, "staging")
    before = await state_of(api, envs, prod.model.id)
    for call, code, reason in (
        (promote(api, s.deployment.id, "staging"), grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_IN_ENVIRONMENT"),
        (promote(api, prod.deployment.id), grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_PRODUCTION"),
        (
            promote(api, prod.deployment.id, "staging"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "PRODUCTION_DEPLOYMENT_NOT_MOVABLE",
        ),
        (promote(api, s.deployment.id, "nowhere"), grpc.StatusCode.NOT_FOUND, "ENVIRONMENT_NOT_FOUND"),
        (promote(api, s.deployment.id, "Bad Name"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENVIRONMENT_NAME"),
        (
            api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=prod.deployment.id)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "PRODUCTION_NOT_DELETABLE",
        ),
    ):
        await refused(call, code, reason)
    assert await state_of(api, envs, prod.model.id) == before

    # Promoting staging's deployment into qa moves it: staging is left without one.
    moved = await promote(api, s.deployment.id, "qa")
    assert moved.completed and moved.deployment.environment == "qa"
    assert (await get(envs, "m", "staging")).deployment_id == ""
    # And into production: qa is left without one, the former production stays published.
    moved = await promote(api, s.deployment.id)
    assert moved.completed and moved.deployment.is_production and moved.deployment.environment == "production"
    assert (await get(envs, "m", "qa")).deployment_id == ""
    former = await api.get(prod.deployment.id)
    assert (former.environment, former.is_production, former.active) == ("", False, True)


async def test_deleting_an_environment_leaves_its_deployment_published_and_cancels_a_promotion(
    api: Api, envs, tmp_path
):
    await api.push(api.package("m"))
    await create(envs, "m", "staging")
    s = await api.push(api.package("m", tag="s"), target=ds.PUSH_TARGET_PUBLISHED)
    await active(api, s)
    await promote(api, s.deployment.id, "staging")
    await create(envs, "m", "qa")
    gate = tmp_path / "gate"
    slow = await api.push(api.package("m", source=GATED_MODEL.format(gate=str(gate))), target=ds.PUSH_TARGET_PUBLISHED)
    await promote(api, slow.deployment.id, "qa")  # waits for it to be ready

    deleted = await envs.DeleteEnvironment(es.DeleteEnvironmentRequest(model_id="m", name="staging"))
    assert deleted.environment.deployment_id == s.deployment.id and deleted.environment.HasField("delete_time")
    kept = await api.get(s.deployment.id)
    assert (kept.environment, kept.active, kept.state) == ("", True, r.DEPLOYMENT_STATE_ACTIVE)
    await envs.DeleteEnvironment(es.DeleteEnvironmentRequest(model_id="m", name="qa"))
    assert (await api.get(slow.deployment.id)).promoting_environment == ""
    gate.touch()
    await active(api, slow)
    assert await names(envs, "m") == ["production"]
    assert (await api.get(slow.deployment.id)).environment == ""
    types = [
        e.type for e in (await api.deployments.ListEvents(ds.ListEventsRequest(model_id="m", environment="qa"))).events
    ]
    assert types[-2:] == ["model.promotion_cancelled", "environment.deleted"]
    # Now an ordinary published deployment: it can be deleted.
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=s.deployment.id))


async def test_push_promote_into_an_environment_and_the_model_is_told_its_environment(api: Api, envs):
    await refused(
        api.deployments.CreateDeployment(
            ds.CreateDeploymentRequest(target=ds.PUSH_TARGET_PRODUCTION, environment="staging", **_archive(api))
        ),
        grpc.StatusCode.NOT_FOUND,
        "ENVIRONMENT_NOT_FOUND",
    )
    await refused(api.model("m"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")  # the refused push created nothing
    dev = await api.push(api.package("m", source=ENVIRONMENT_MODEL))
    await create(envs, "m", "staging", max_replica=2)
    await refused(
        api.deployments.CreateDeployment(
            ds.CreateDeploymentRequest(target=ds.PUSH_TARGET_PUBLISHED, environment="staging", **_archive(api))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ENVIRONMENT_NEEDS_PROMOTE",
    )
    from slipway.packaging import archive_package

    archive, digest = archive_package(api.package("m", source=ENVIRONMENT_MODEL))
    pushed = await api.deployments.CreateDeployment(
        ds.CreateDeploymentRequest(
            package_archive=archive, package_sha256=digest, target=ds.PUSH_TARGET_PRODUCTION, environment="staging"
        )
    )
    assert pushed.deployment.promoting_environment == "staging"
    assert pushed.deployment.autoscaling_settings.max_replica == 2
    await wait_environment(envs, "m", "staging", pushed.deployment.id)
    staged = await active(api, pushed)
    assert json.loads(await api.predict(staged)) == {"environment": {"name": "staging"}}
    assert json.loads(await api.predict(await active(api, dev))) == {"environment": None}


async def test_a_candidate_that_fails_to_start_leaves_the_environment_unchanged(api: Api, envs):
    await api.push(api.package("m"))
    await create(envs, "m", "staging")
    good = await api.push(api.package("m", tag="good"), target=ds.PUSH_TARGET_PUBLISHED)
    await active(api, good)
    await promote(api, good.deployment.id, "staging")
    from slipway.packaging import archive_package

    archive, digest = archive_package(api.package("m", source=FAILING_MODEL.format(reason="no weights")))
    broken = await api.deployments.CreateDeployment(
        ds.CreateDeploymentRequest(
            package_archive=archive, package_sha256=digest, target=ds.PUSH_TARGET_PRODUCTION, environment="staging"
        )
    )
    await api.wait_state(broken.deployment.id, r.DEPLOYMENT_STATE_DEPLOY_FAILED)

    async def over():
        return (await get(envs, "m", "staging")).promoting_deployment_id == ""

    await wait_until(over, what="the failed promotion to end")
    assert (await get(envs, "m", "staging")).deployment_id == good.deployment.id
    events = await api.deployments.ListEvents(
        ds.ListEventsRequest(model_id="m", deployment_id=broken.deployment.id, environment="staging")
    )
    failed = [e for e in events.events if e.type == "model.promotion_failed"]
    assert len(failed) == 1 and "staging unchanged" in failed[0].message
