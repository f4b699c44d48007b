"""Which deployments can be promoted: plan_promotion over kinds and states, and a failed
development deployment refused through the API the way a failed published one is."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from conftest import FAILING_MODEL, Api
from test_lifecycle import refused, snapshot

from controller.domain import (
    DEVELOPMENT_AUTOSCALING,
    Deployment,
    Kind,
    Model,
    PromotionKind,
    State,
)
from controller.environments import PRODUCTION, Environment, plan_promotion
from controller.errors import Aborted, FailedPrecondition, NotFound
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import resources_pb2 as r

# Every test that starts a controller runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_backends

MODEL = Model("m1", "m", None, "d-dev", None, 1, 0.0, 0.0)
PRODUCTION_ENVIRONMENT = Environment("m1", PRODUCTION, None, None, None, 0.0, 0.0)
DEPLOYMENT = Deployment(
    id="d1",
    model_id="m1",
    name="deployment-1",
    kind=Kind.PUBLISHED,
    active=True,
    autoscaling=DEVELOPMENT_AUTOSCALING,
    package_digest="a" * 64,
    revision=1,
    create_time=0.0,
    update_time=0.0,
)
FAILED = ("DEPLOYMENT_FAILED", FailedPrecondition)


def development(**changes) -> Deployment:
    return dataclasses.replace(DEPLOYMENT, kind=Kind.DEVELOPMENT, name="development", **changes)


def published(**changes) -> Deployment:
    return dataclasses.replace(DEPLOYMENT, **changes)


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [
        (development(state=State.ACTIVE), PromotionKind.FROM_DEVELOPMENT),
        (development(state=State.SCALED_TO_ZERO), PromotionKind.FROM_DEVELOPMENT),
        (development(state=State.BUILDING), PromotionKind.FROM_DEVELOPMENT),  # the copy builds the same environment
        (development(state=State.LOADING_MODEL), PromotionKind.FROM_DEVELOPMENT),
        (development(state=State.DEPLOY_FAILED, failed_revision=1), FAILED),
        (development(state=State.BUILD_FAILED, failed_revision=1), FAILED),
        (development(state=State.FAILED), FAILED),
        (development(state=State.LOADING_MODEL, failed_revision=1), FAILED),  # failed, state not yet recorded
        (development(state=State.ACTIVE, failed_revision=0), PromotionKind.FROM_DEVELOPMENT),  # an older revision
        (
            development(state=State.ACTIVE, patched_digest="b" * 64, reload_error="SyntaxError: x"),
            ("LIVE_RELOAD_FAILED", FailedPrecondition),
        ),
        # A reload under way: promoting takes the package that serves.
        (development(state=State.ACTIVE, patched_digest="b" * 64), PromotionKind.FROM_DEVELOPMENT),
        (development(active=False, state=State.INACTIVE), ("DEPLOYMENT_INACTIVE", FailedPrecondition)),
        (published(state=State.ACTIVE), PromotionKind.IMMEDIATE),
        (published(state=State.SCALED_TO_ZERO), PromotionKind.IMMEDIATE),
        (published(state=State.UPDATING), PromotionKind.IMMEDIATE),
        (published(state=State.BUILDING), PromotionKind.WHEN_READY),
        (published(state=State.DEPLOYING), PromotionKind.WHEN_READY),
        (published(state=State.DEPLOY_FAILED, failed_revision=1), FAILED),
        (published(state=State.BUILD_FAILED, failed_revision=1), FAILED),
        (published(state=State.FAILED), FAILED),
        (published(active=False, state=State.INACTIVE), ("DEPLOYMENT_INACTIVE", FailedPrecondition)),
        (
            published(is_production=True, environment=PRODUCTION, state=State.ACTIVE),
            ("ALREADY_PRODUCTION", FailedPrecondition),
        ),
        (published(delete_time=1.0), ("DEPLOYMENT_DELETED", NotFound)),
    ],
    ids=lambda value: f"{value.kind}-{value.state}" if isinstance(value, Deployment) else None,
)
def test_plan_promotion(deployment: Deployment, expected):
    """Failed deployments are refused alike, whatever their kind."""
    if isinstance(expected, PromotionKind):
        assert plan_promotion(MODEL, PRODUCTION_ENVIRONMENT, deployment) is expected
        return
    reason, kind = expected
    with pytest.raises(kind) as caught:
        plan_promotion(MODEL, PRODUCTION_ENVIRONMENT, deployment)
    assert caught.value.reason == reason
    assert caught.value.metadata["deployment_id"] == deployment.id


def test_a_promotion_in_flight_is_refused_first():
    busy = dataclasses.replace(PRODUCTION_ENVIRONMENT, promoting_deployment_id="d9")
    with pytest.raises(Aborted) as caught:
        plan_promotion(MODEL, busy, development(state=State.DEPLOY_FAILED, failed_revision=1))
    assert caught.value.reason == "PROMOTION_IN_PROGRESS"


async def test_failed_development_and_published_deployments_are_refused_alike(api: Api):
    broken = FAILING_MODEL.format(reason="disk on fire")
    dev = await api.push(api.package("m", source=broken))
    pub = await api.push(api.package("m", source=broken), target=ds.PUSH_TARGET_PUBLISHED)
    for pushed in (dev, pub):
        await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_DEPLOY_FAILED)
    before = await snapshot(api, dev.model.id)
    for pushed in (dev, pub):
        error = await refused(
            api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=pushed.deployment.id)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "DEPLOYMENT_FAILED",
        )
        assert "disk on fire" in error.details()
    assert await snapshot(api, dev.model.id) == before
