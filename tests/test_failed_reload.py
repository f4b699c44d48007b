"""A live reload that fails is visible through the API, and a replica that starts later
loads the last package that loaded, while the failed patch stays the base of the next."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import grpc
import pytest
from conftest import Api, wait_until
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_lifecycle import refused
from test_live_reload import model_source, patch, write_live_package

from controller.domain import (
    DEVELOPMENT_AUTOSCALING,
    Deployment,
    Kind,
    ReplicaPhase,
    ReplicaView,
    State,
    check_patch_base,
    compute_state,
)
from controller.errors import Aborted
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import resources_pb2 as r

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
SYNTAX_ERROR = b"class Model:\n    def predict(self, model_input)\n        return 1\n"


async def serving(api: Api, deployment_id: str, model: str) -> r.Deployment:
    """The deployment once a ready replica answers with `model`'s code."""

    async def check():
        deployment = await api.get(deployment_id)
        if deployment.state != ACTIVE or not deployment.ready_replicas:
            return None
        try:
            answer = json.loads(await api.predict(deployment))
        except (grpc.aio.AioRpcError, AssertionError):
            return None  # the replica is being replaced
        return deployment if answer["model"] == model else None

    return await wait_until(check, 60, f"{deployment_id} to serve {model!r}")


async def events_of(api: Api, deployment_id: str) -> list[tuple[str, str]]:
    listed = await api.deployments.ListEvents(ds.ListEventsRequest(deployment_id=deployment_id, page_size=1000))
    return [(e.type, e.message) for e in listed.events]


async def status_message(api: Api, deployment_id: str, predicate) -> str:
    async def check():
        message = (await api.get(deployment_id)).status_message
        return (message,) if predicate(message) else None  # a tuple: the empty message counts

    return (await wait_until(check, 30, f"a status message of {deployment_id}"))[0]


async def test_failed_reload_is_recorded_and_a_restart_loads_the_last_good_package(api: Api, tmp_path):
    pushed = await api.push(write_live_package(tmp_path / "live"))
    deployment_id = pushed.deployment.id
    await api.wait_state(deployment_id, ACTIVE)
    good = await patch(api, deployment_id, pushed.deployment.package_digest, {"model/model.py": model_source("two")})
    assert good.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, good.error
    before = await serving(api, deployment_id, "two")

    broken = await patch(api, deployment_id, good.package_digest, {"model/model.py": SYNTAX_ERROR})
    assert broken.result == ds.PATCH_RESULT_FAILED and broken.error.startswith("SyntaxError"), broken.error
    assert broken.package_digest != good.package_digest, "the response names the patched package: the next base"
    # The deployment shows what it serves, and says why the patch is not it.
    assert broken.deployment.package_digest == good.package_digest
    message = await status_message(api, deployment_id, lambda m: "SyntaxError" in m)
    assert "live reload" in message and broken.package_digest[:12] in message and good.package_digest[:12] in message
    current = await api.get(deployment_id)
    assert (current.state, current.package_digest) == (ACTIVE, good.package_digest)
    failed_events = [m for t, m in await events_of(api, deployment_id) if t == "deployment.reload_failed"]
    assert len(failed_events) == 1 and "SyntaxError" in failed_events[0], failed_events

    # A replica that starts now (here after a crash) loads the last package that loaded.
    os.kill(before.replicas[0].pid, signal.SIGKILL)
    restarted = await serving(api, deployment_id, "two")
    assert restarted.replicas[0].pid != before.replicas[0].pid
    assert restarted.package_digest == good.package_digest
    assert "SyntaxError" in restarted.status_message, "the failure is told until a later patch succeeds"

    # The failed patch stays the base: a patch against the serving package is stale.
    stale = await refused(
        patch(api, deployment_id, good.package_digest, {"model/model.py": model_source("three")}),
        grpc.StatusCode.ABORTED,
        "STALE_PACKAGE_BASE",
    )
    assert error_metadata(stale)["package_digest"] == broken.package_digest

    fixed = await patch(api, deployment_id, broken.package_digest, {"model/model.py": model_source("three")})
    assert fixed.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, fixed.error
    assert fixed.deployment.package_digest == fixed.package_digest
    await status_message(api, deployment_id, lambda m: m == "")
    assert (await serving(api, deployment_id, "three")).replicas[0].pid == restarted.replicas[0].pid
    assert "deployment.reloaded" in [t for t, _ in (await events_of(api, deployment_id))[-2:]]


async def test_a_push_clears_a_failed_reload(api: Api, tmp_path):
    package = write_live_package(tmp_path / "live")
    pushed = await api.push(package)
    deployment_id = pushed.deployment.id
    await api.wait_state(deployment_id, ACTIVE)
    broken = await patch(api, deployment_id, pushed.deployment.package_digest, {"model/model.py": SYNTAX_ERROR})
    assert broken.result == ds.PATCH_RESULT_FAILED
    await status_message(api, deployment_id, lambda m: "SyntaxError" in m)

    (package / "model" / "model.py").write_bytes(model_source("two"))
    repushed = await api.push(package)
    await serving(api, deployment_id, "two")
    current = await api.get(deployment_id)
    assert (current.status_message, current.package_digest) == ("", repushed.deployment.package_digest)
    again = await patch(api, deployment_id, current.package_digest, {"model/model.py": model_source("three")})
    assert again.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, again.error


async def test_a_development_deployment_whose_reload_failed_is_not_promoted(api: Api, tmp_path):
    pushed = await api.push(write_live_package(tmp_path / "live"))
    deployment_id = pushed.deployment.id
    await api.wait_state(deployment_id, ACTIVE)
    broken = await patch(api, deployment_id, pushed.deployment.package_digest, {"model/model.py": SYNTAX_ERROR})
    assert broken.result == ds.PATCH_RESULT_FAILED

    await refused(
        api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=deployment_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "LIVE_RELOAD_FAILED",
    )
    model = await api.model(pushed.model.id)
    assert (model.deployment_count, model.promoting_deployment_id, model.production_deployment_id) == (1, "", "")


def error_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    for detail in rpc_status.from_call(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return dict(info.metadata)
    raise AssertionError(f"no ErrorInfo in {error}")


# --- the rules as pure functions -------------------------------------------------------

SERVING, PATCHED = "a" * 64, "b" * 64
DEVELOPMENT = Deployment(
    id="d1",
    model_id="m1",
    name="development",
    kind=Kind.DEVELOPMENT,
    active=True,
    autoscaling=DEVELOPMENT_AUTOSCALING,
    package_digest=SERVING,
    revision=1,
    create_time=0.0,
    update_time=0.0,
)
RELOAD_FAILED = dataclasses.replace(DEVELOPMENT, patched_digest=PATCHED, reload_error="SyntaxError: bad")
READY = [ReplicaView(ReplicaPhase.READY, 1)]


@pytest.mark.parametrize(
    ("deployment", "replicas", "desired", "expected_state", "expected_message"),
    [
        (DEVELOPMENT, READY, 1, State.ACTIVE, ""),
        (dataclasses.replace(DEVELOPMENT, patched_digest=PATCHED), READY, 1, State.ACTIVE, ""),  # reload under way
        (RELOAD_FAILED, READY, 1, State.ACTIVE, "NOTE"),
        (RELOAD_FAILED, [], 0, State.SCALED_TO_ZERO, "NOTE"),
        (RELOAD_FAILED, [ReplicaView(ReplicaPhase.LOADING, 1)], 1, State.LOADING_MODEL, "loading the model; NOTE"),
        (dataclasses.replace(RELOAD_FAILED, active=False), [], 0, State.INACTIVE, "NOTE"),
        # A failed revision's message says more (and is fed back as load_error: never appended to).
        (dataclasses.replace(RELOAD_FAILED, failed_revision=1), [], 0, State.DEPLOY_FAILED, "the model failed to load"),
    ],
)
def test_a_failed_reload_is_told_in_the_status_message(deployment, replicas, desired, expected_state, expected_message):
    note = (
        f"the latest live reload (package {PATCHED[:12]}) failed: SyntaxError: bad; " if deployment.reload_error else ""
    )
    note += f"the deployment keeps package {SERVING[:12]}, the last that loaded" if note else ""
    state, message = compute_state(deployment, replicas, desired)
    assert (state, message) == (expected_state, expected_message.replace("NOTE", note))


@pytest.mark.parametrize(
    ("deployment", "base", "accepted"),
    [
        (DEVELOPMENT, SERVING, True),
        (DEVELOPMENT, PATCHED, False),
        (DEVELOPMENT, "", False),
        (RELOAD_FAILED, PATCHED, True),  # the user's latest files build on the failed patch
        (RELOAD_FAILED, SERVING, False),
    ],
)
def test_the_patch_base_is_the_latest_patched_package(deployment: Deployment, base: str, accepted: bool):
    if accepted:
        check_patch_base(deployment, base)
        return
    with pytest.raises(Aborted) as caught:
        check_patch_base(deployment, base)
    assert caught.value.reason == "STALE_PACKAGE_BASE"
    assert caught.value.metadata["package_digest"] == deployment.patch_base_digest
