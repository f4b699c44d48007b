"""UpdateDeployment's field mask (AIP-134): with a mask, exactly the listed paths; without
one, the fields that are set. Autoscaling settings are plain proto3 scalars (no
presence), so without a mask a zero means "not set"."""

from __future__ import annotations

import grpc
import pytest
from conftest import Api
from google.protobuf import field_mask_pb2
from test_lifecycle import refused, update_request

from controller.convert import update_from_proto
from controller.domain import AUTOSCALING_FIELDS
from controller.errors import InvalidArgument
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import resources_pb2 as r

# Every test that starts a controller runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_backends

ALL_ZERO = dict.fromkeys(AUTOSCALING_FIELDS, 0)


def request(paths: list[str] | None = None, name: str = "", **settings: int) -> ds.UpdateDeploymentRequest:
    deployment = r.Deployment(id="d1", name=name)
    if settings:
        deployment.autoscaling_settings.CopyFrom(r.AutoscalingSettings(**settings))
    mask = field_mask_pb2.FieldMask(paths=paths or [])
    return ds.UpdateDeploymentRequest(deployment=deployment, update_mask=mask)


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        # No mask: only what is set.
        (request(max_replica=3), (None, {"max_replica": 3})),
        (request(min_replica=1, scale_down_delay=30), (None, {"min_replica": 1, "scale_down_delay": 30})),
        (request(name="v2"), ("v2", {})),
        (request(name="v2", concurrency_target=4), ("v2", {"concurrency_target": 4})),
        # No mask: a zero is not set (min_replica 0 and scale_down_delay 0 need a mask).
        (request(min_replica=0, max_replica=2), (None, {"max_replica": 2})),
        # A mask naming one setting: that setting, zero included.
        (request(["autoscaling_settings.min_replica"], min_replica=0), (None, {"min_replica": 0})),
        (request(["autoscaling_settings.scale_down_delay"]), (None, {"scale_down_delay": 0})),
        (request(["autoscaling_settings.max_replica"], max_replica=5, min_replica=2), (None, {"max_replica": 5})),
        (request(["name"], name="v3", max_replica=5), ("v3", {})),
        # A mask naming the whole message replaces all six settings.
        (request(["autoscaling_settings"], max_replica=2), (None, {**ALL_ZERO, "max_replica": 2})),
    ],
)
def test_update_from_proto(update: ds.UpdateDeploymentRequest, expected):
    assert update_from_proto(update) == expected


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (request(), "EMPTY_UPDATE"),
        (request(min_replica=0, scale_down_delay=0), "EMPTY_UPDATE"),  # all zero: nothing is set
        (request(["autoscaling_settings.nope"]), "INVALID_UPDATE_MASK"),
        (request(["active"]), "INVALID_UPDATE_MASK"),
    ],
)
def test_update_from_proto_refusals(update: ds.UpdateDeploymentRequest, reason: str):
    with pytest.raises(InvalidArgument) as caught:
        update_from_proto(update)
    assert caught.value.reason == reason


def test_an_empty_update_says_how_to_set_a_zero():
    with pytest.raises(InvalidArgument, match=r"update_mask.*autoscaling_settings\.min_replica"):
        update_from_proto(request(min_replica=0))


async def test_partial_autoscaling_update_without_a_mask_changes_only_what_is_set(api: Api):
    pushed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    deployment_id = pushed.deployment.id
    await api.deployments.UpdateDeployment(
        update_request(
            deployment_id,
            "autoscaling_settings.min_replica",
            "autoscaling_settings.scale_down_delay",
            min_replica=1,
            scale_down_delay=0,
        )
    )
    before = (await api.get(deployment_id)).autoscaling_settings

    updated = await api.deployments.UpdateDeployment(update_request(deployment_id, max_replica=3))
    expected = r.AutoscalingSettings()
    expected.CopyFrom(before)
    expected.max_replica = 3
    assert updated.deployment.autoscaling_settings == expected
    assert (await api.get(deployment_id)).autoscaling_settings == expected

    await refused(
        api.deployments.UpdateDeployment(update_request(deployment_id, min_replica=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "EMPTY_UPDATE",
    )
    zeroed = await api.deployments.UpdateDeployment(
        update_request(deployment_id, "autoscaling_settings.min_replica", min_replica=0)
    )
    assert (zeroed.deployment.autoscaling_settings.min_replica, zeroed.deployment.autoscaling_settings.max_replica) == (
        0,
        3,
    )
