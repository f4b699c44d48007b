"""Every row and bullet of DESIGN.md §2 through the real gRPC API, with real replicas.

Refusals are checked for their status code and ErrorInfo reason, and for having
changed nothing.
"""

from __future__ import annotations

import asyncio
import json
import os

import grpc
import pytest
from conftest import FAILING_MODEL, Api, error_reason, wait_until
from google.protobuf import field_mask_pb2

from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import resources_pb2 as r

# Every test that starts a controller runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_backends

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
GATED_MODEL = """
import pathlib, time

class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        gate = pathlib.Path({gate!r})
        while not gate.exists():
            time.sleep(0.01)

    def predict(self, model_input):
        return {{"gated": model_input}}
"""


async def refused(call, code: grpc.StatusCode, reason: str):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    assert error_reason(caught.value) == reason
    return caught.value


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


async def active(api: Api, pushed) -> r.Deployment:
    return await api.wait_state(pushed.deployment.id, ACTIVE)


async def snapshot(api: Api, model_id: str):
    """Everything a refused call must leave unchanged."""
    model = await api.model(model_id)
    listed = await api.deployments.ListDeployments(ds.ListDeploymentsRequest(model_id=model_id, show_deleted=True))
    return (
        model.production_deployment_id,
        model.development_deployment_id,
        model.promoting_deployment_id,
        [
            (d.id, d.name, d.active, d.delete_time.seconds, d.autoscaling_settings.SerializeToString())
            for d in listed.deployments
        ],
    )


def update_request(deployment_id: str, *paths: str, **fields) -> ds.UpdateDeploymentRequest:
    deployment = r.Deployment(id=deployment_id)
    for key, value in fields.items():
        if key == "name":
            deployment.name = value
        else:
            setattr(deployment.autoscaling_settings, key, value)
    return ds.UpdateDeploymentRequest(deployment=deployment, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))


# --- development ---------------------------------------------------------------------


async def test_development_push_updates_in_place(api: Api):
    first = await api.push(api.package("m", tag="one"))
    deployment = await active(api, first)
    assert json.loads(await api.predict(deployment))["tag"] == "one"

    second = await api.push(api.package("m", tag="two"))
    assert second.deployment.id == first.deployment.id
    assert second.deployment.revision == 2
    assert second.deployment.state == r.DEPLOYMENT_STATE_UPDATING, "not ACTIVE before revision 2 is"
    assert not second.model_created

    async def answers_two():
        d = await api.get(first.deployment.id)
        if d.state != ACTIVE or not all(rep.revision == 2 for rep in d.replicas):
            return None
        return d

    updated = await wait_until(answers_two, what="development to run revision 2")
    assert json.loads(await api.predict(updated))["tag"] == "two"
    assert len((await api.deployments.ListDeployments(ds.ListDeploymentsRequest(model_id="m"))).deployments) == 1


BUSY_MODEL = """
import pathlib, subprocess

class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):  # a helper process of the model's own, as a model server may start
        helper = subprocess.Popen(["sleep", "120"])
        pathlib.Path({helper!r}).write_text(str(helper.pid))

    def predict(self, model_input):
        pathlib.Path({entered!r}).touch()
        while not pathlib.Path({gate!r}).exists():
            pass
        return "done"
"""


async def test_a_development_update_never_runs_two_replicas(api: Api, controller, tmp_path):
    entered, gate, helper = tmp_path / "entered", tmp_path / "gate", tmp_path / "helper"
    first = await api.push(
        api.package("m", source=BUSY_MODEL.format(entered=str(entered), gate=str(gate), helper=str(helper)))
    )
    deployment = await active(api, first)
    in_flight = asyncio.ensure_future(api.predict(deployment))
    await wait_until(entered.exists, what="a request in flight on the development replica")

    most = 0

    def count(handle) -> None:
        nonlocal most
        live = [h for h in controller.reconciler.replicas_of(first.deployment.id) if not h.exited]
        most = max(most, len(live))
        hook(handle)

    hook, controller.reconciler._on_replica_change_hook = controller.reconciler._on_replica_change_hook, count
    try:
        await api.push(api.package("m", tag="two"))

        async def runs_two():
            d = await api.get(first.deployment.id)
            return d.state == ACTIVE and [rep.revision for rep in d.replicas] == [2]

        await wait_until(runs_two, what="development to run revision 2")
    finally:
        gate.touch()
        controller.reconciler._on_replica_change_hook = hook
    assert most == 1, "the old revision's replica was still running when the new one started"
    await wait_until(
        lambda: not pid_alive(int(helper.read_text())), what="the model's own process to go with its replica"
    )
    with pytest.raises(grpc.aio.AioRpcError):  # the spec lets a development update fail active requests
        await in_flight


async def test_development_cannot_be_renamed_or_autoscaled(api: Api):
    pushed = await api.push(api.package("m"))
    dev_id = pushed.deployment.id
    before = await snapshot(api, pushed.model.id)
    await refused(
        api.deployments.UpdateDeployment(update_request(dev_id, "name", name="fancy")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "DEVELOPMENT_NOT_RENAMABLE",
    )
    await refused(
        api.deployments.UpdateDeployment(update_request(dev_id, "autoscaling_settings.max_replica", max_replica=3)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "DEVELOPMENT_AUTOSCALING_FIXED",
    )
    await refused(
        api.push(api.package("m"), name="fancy"), grpc.StatusCode.INVALID_ARGUMENT, "DEVELOPMENT_NOT_RENAMABLE"
    )
    assert await snapshot(api, pushed.model.id) == before
    dev = await api.get(dev_id)
    assert dev.name == "development"
    # Read-modify-write that changes nothing is no rename and no autoscaling change.
    unchanged = ds.UpdateDeploymentRequest(
        deployment=dev, update_mask=field_mask_pb2.FieldMask(paths=["name", "autoscaling_settings"])
    )
    assert (await api.deployments.UpdateDeployment(unchanged)).deployment.name == "development"
    assert await snapshot(api, pushed.model.id) == before
    assert (dev.autoscaling_settings.min_replica, dev.autoscaling_settings.max_replica) == (0, 1)


async def test_development_is_not_reachable_by_model_id_and_can_be_deleted(api: Api):
    pushed = await api.push(api.package("m"))
    deployment = await active(api, pushed)
    model = await api.model("m")
    assert model.production_deployment_id == ""  # the model-ID route has nothing to resolve to
    assert model.development_deployment_id == deployment.id
    pid = deployment.replicas[0].pid

    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=deployment.id))
    await refused(api.get(deployment.id), grpc.StatusCode.NOT_FOUND, "DEPLOYMENT_DELETED")
    assert (await api.model("m")).development_deployment_id == ""
    await wait_until(lambda: not pid_alive(pid), what="replica process to stop")
    # Pushing again creates a new development deployment with a new ID.
    again = await api.push(api.package("m"))
    assert again.deployment.id != deployment.id and again.deployment.name == "development"


# --- promotion -----------------------------------------------------------------------


async def test_promoting_development_creates_a_new_deployment_that_becomes_production_when_ready(api: Api, tmp_path):
    gate = tmp_path / "gate"
    dev = await api.push(api.package("m", tag="dev"))
    await active(api, dev)
    # Make the development package's model wait for the gate, so readiness is under the test's control.
    dev = await api.push(api.package("m", source=GATED_MODEL.format(gate=str(gate))))
    gate.touch()
    await active(api, dev)
    dev_before = await api.get(dev.deployment.id)
    gate.unlink()

    promoted = await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=dev.deployment.id))
    new = promoted.deployment
    assert not promoted.completed
    assert new.id != dev.deployment.id
    assert new.name == "deployment-1"
    assert new.kind == r.DEPLOYMENT_KIND_PUBLISHED
    assert new.source_deployment_id == dev.deployment.id
    assert new.package_digest == dev_before.package_digest
    assert new.autoscaling_settings == r.AutoscalingSettings(
        min_replica=0,
        max_replica=1,
        autoscaling_window=60,
        scale_down_delay=900,
        concurrency_target=1,
        target_utilization_percentage=70,
    )

    await api.wait_state(new.id, r.DEPLOYMENT_STATE_LOADING_MODEL)
    model = await api.model("m")
    assert model.production_deployment_id == ""
    assert model.promoting_deployment_id == new.id

    gate.touch()
    model = await api.wait_production(model.id, new.id)
    assert model.promoting_deployment_id == ""
    assert (await api.get(new.id)).state == ACTIVE
    dev_after = await api.get(dev.deployment.id)
    assert (dev_after.id, dev_after.name, dev_after.active, dev_after.autoscaling_settings) == (
        dev_before.id,
        dev_before.name,
        dev_before.active,
        dev_before.autoscaling_settings,
    )
    assert not dev_after.is_production


async def test_second_promotion_while_one_is_in_flight_is_aborted(api: Api, tmp_path):
    gate = tmp_path / "gate"
    dev = await api.push(api.package("m", source=GATED_MODEL.format(gate=str(gate))))
    gate.touch()
    await active(api, dev)
    gate.unlink()
    published = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    await active(api, published)

    first = await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=dev.deployment.id))
    before = await snapshot(api, dev.model.id)
    await refused(
        api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=published.deployment.id)),
        grpc.StatusCode.ABORTED,
        "PROMOTION_IN_PROGRESS",
    )
    await refused(
        api.push(api.package("m"), target=ds.PUSH_TARGET_PRODUCTION), grpc.StatusCode.ABORTED, "PROMOTION_IN_PROGRESS"
    )
    assert await snapshot(api, dev.model.id) == before
    gate.touch()
    await api.wait_production(dev.model.id, first.deployment.id)


async def test_promotion_inherits_production_settings_and_demotes_the_former_production(api: Api):
    dev = await api.push(api.package("m"))
    await active(api, dev)
    first = await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=dev.deployment.id))
    await api.wait_production(dev.model.id, first.deployment.id)
    await api.deployments.UpdateDeployment(
        update_request(
            first.deployment.id,
            "autoscaling_settings.max_replica",
            "autoscaling_settings.autoscaling_window",
            max_replica=3,
            autoscaling_window=30,
        )
    )
    former = await api.get(first.deployment.id)

    second = await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=dev.deployment.id))
    assert second.deployment.name == "deployment-2"
    assert second.deployment.autoscaling_settings == former.autoscaling_settings
    await api.wait_production(dev.model.id, second.deployment.id)

    demoted = await api.get(first.deployment.id)
    assert not demoted.is_production
    assert (demoted.id, demoted.autoscaling_settings, demoted.active) == (former.id, former.autoscaling_settings, True)
    # The former production is an ordinary published deployment now: it can be deleted.
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=demoted.id))


async def test_promoting_a_published_deployment_keeps_its_id_and_settings(api: Api):
    a = await api.push(api.package("m", tag="a"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(a.model.id, a.deployment.id)
    b = await api.push(api.package("m", tag="b"), target=ds.PUSH_TARGET_PUBLISHED, name="canary")
    await active(api, b)
    await api.deployments.UpdateDeployment(
        update_request(b.deployment.id, "autoscaling_settings.max_replica", max_replica=2)
    )
    before = await api.get(b.deployment.id)

    promoted = await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=b.deployment.id))
    assert promoted.completed
    assert promoted.deployment.id == b.deployment.id
    assert promoted.deployment.is_production
    assert promoted.deployment.autoscaling_settings == before.autoscaling_settings
    model = await api.model("m")
    assert model.production_deployment_id == b.deployment.id
    former = await api.get(a.deployment.id)
    assert former.active and not former.is_production

    await refused(
        api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=b.deployment.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ALREADY_PRODUCTION",
    )


async def test_promoting_an_inactive_deployment_is_refused_until_it_is_activated(api: Api):
    published = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    await active(api, published)
    await api.deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=published.deployment.id))
    before = await snapshot(api, published.model.id)
    await refused(
        api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=published.deployment.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "DEPLOYMENT_INACTIVE",
    )
    assert await snapshot(api, published.model.id) == before
    await api.deployments.ActivateDeployment(ds.ActivateDeploymentRequest(deployment_id=published.deployment.id))
    await active(api, published)
    done = await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=published.deployment.id))
    assert done.completed and done.deployment.is_production


# With no scale-down delay, a deployment still loading must not be scaled to zero (and so
# count as ready for the promotion) before it ever served.
@pytest.mark.parametrize("scale_down_delay", [900, 0])
async def test_push_promote_whose_model_fails_to_load_leaves_production_unchanged(api: Api, scale_down_delay: int):
    good = await api.push(api.package("m"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(good.model.id, good.deployment.id)
    await api.deployments.UpdateDeployment(
        update_request(good.deployment.id, "autoscaling_settings.scale_down_delay", scale_down_delay=scale_down_delay)
    )
    bad = await api.push(
        api.package("m", source=FAILING_MODEL.format(reason="disk on fire")), target=ds.PUSH_TARGET_PRODUCTION
    )
    failed = await api.wait_state(bad.deployment.id, r.DEPLOYMENT_STATE_DEPLOY_FAILED)
    assert "RuntimeError" in failed.status_message and "disk on fire" in failed.status_message

    async def promotion_over():
        m = await api.model("m")
        return m if m.promoting_deployment_id == "" else None

    model = await wait_until(promotion_over, what="the failed promotion to be cleared")
    assert model.production_deployment_id == good.deployment.id
    events = await api.deployments.ListEvents(ds.ListEventsRequest(deployment_id=bad.deployment.id))
    assert "model.promotion_failed" in [e.type for e in events.events]
    await refused(
        api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=bad.deployment.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "DEPLOYMENT_FAILED",
    )


async def test_production_switches_only_after_the_new_deployment_is_active(api: Api):
    first = await api.push(api.package("m", tag="one"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(first.model.id, first.deployment.id)
    second = await api.push(api.package("m", tag="two"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(first.model.id, second.deployment.id)
    events = (await api.deployments.ListEvents(ds.ListEventsRequest(deployment_id=second.deployment.id))).events
    order = [(e.type, e.message) for e in events]
    became_active = next(
        i
        for i, (t, m) in enumerate(order)
        if t == "deployment.state_changed" and m.split(" -> ")[1].startswith("ACTIVE")
    )
    switched = next(i for i, (t, _) in enumerate(order) if t == "model.production_changed")
    assert became_active < switched


# --- deactivate / activate / delete --------------------------------------------------


async def test_production_can_be_deactivated_and_activated(api: Api):
    pushed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(pushed.model.id, pushed.deployment.id)
    running = await active(api, pushed)
    pid = running.replicas[0].pid
    assert pid_alive(pid)

    await api.deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=pushed.deployment.id))
    inactive = await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_INACTIVE)
    assert not inactive.active and not inactive.replicas and inactive.is_production
    assert not pid_alive(pid)
    listed = await api.deployments.ListDeployments(ds.ListDeploymentsRequest(model_id="m"))
    assert [d.id for d in listed.deployments] == [pushed.deployment.id]

    await api.deployments.ActivateDeployment(ds.ActivateDeploymentRequest(deployment_id=pushed.deployment.id))
    again = await active(api, pushed)
    assert again.replicas[0].pid != pid


async def test_production_cannot_be_deleted(api: Api):
    pushed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(pushed.model.id, pushed.deployment.id)
    before = await snapshot(api, pushed.model.id)
    error = await refused(
        api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=pushed.deployment.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PRODUCTION_NOT_DELETABLE",
    )
    assert pushed.deployment.id in error.details()
    assert await snapshot(api, pushed.model.id) == before
    assert (await api.get(pushed.deployment.id)).state == ACTIVE


async def test_deleted_deployment_disappears_but_usage_remains(api: Api, controller):
    pushed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    running = await active(api, pushed)
    pid = running.replicas[0].pid
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=pushed.deployment.id))
    await refused(api.get(pushed.deployment.id), grpc.StatusCode.NOT_FOUND, "DEPLOYMENT_DELETED")
    await refused(  # even an update that would change nothing
        api.deployments.UpdateDeployment(update_request(pushed.deployment.id, "name", name=pushed.deployment.name)),
        grpc.StatusCode.NOT_FOUND,
        "DEPLOYMENT_DELETED",
    )
    await refused(
        api.deployments.ActivateDeployment(ds.ActivateDeploymentRequest(deployment_id=pushed.deployment.id)),
        grpc.StatusCode.NOT_FOUND,
        "DEPLOYMENT_DELETED",
    )
    listed = await api.deployments.ListDeployments(ds.ListDeploymentsRequest(model_id="m"))
    assert listed.deployments == []
    with_deleted = await api.deployments.ListDeployments(
        ds.ListDeploymentsRequest(model_id=pushed.model.id, show_deleted=True)
    )
    assert [d.id for d in with_deleted.deployments] == [pushed.deployment.id]
    assert with_deleted.deployments[0].HasField("delete_time")
    await wait_until(lambda: not pid_alive(pid), what="replica to stop")

    async def settled():
        listed = await api.deployments.ListDeployments(
            ds.ListDeploymentsRequest(model_id=pushed.model.id, show_deleted=True)
        )
        return listed.deployments[0].state == r.DEPLOYMENT_STATE_INACTIVE

    await wait_until(settled, what="the deleted deployment to show INACTIVE")
    # Nothing left to do for it: the reconcile loop no longer looks at it.
    assert pushed.deployment.id not in {d.id for d in await controller.store.deployments_to_reconcile()}

    async def usage():
        records = (
            await api.deployments.ListUsageRecords(ds.ListUsageRecordsRequest(model_id=pushed.model.id))
        ).usage_records
        return records if records and records[0].replica_starts == 1 else None

    [record] = await usage()
    assert record.deployment_id == pushed.deployment.id and record.deployment_deleted
    assert record.replica_seconds > 0


async def test_unknown_ids_are_not_found(api: Api):
    await refused(api.get("d_nope"), grpc.StatusCode.NOT_FOUND, "DEPLOYMENT_NOT_FOUND")
    await refused(api.model("m_nope"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    await refused(
        api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id="d_nope")),
        grpc.StatusCode.NOT_FOUND,
        "DEPLOYMENT_NOT_FOUND",
    )


async def test_deleting_a_model_deletes_all_its_deployments(api: Api):
    prod = await api.push(api.package("m"), target=ds.PUSH_TARGET_PRODUCTION)
    dev = await api.push(api.package("m"))
    await api.wait_production(prod.model.id, prod.deployment.id)
    running = [await active(api, dev), await api.get(prod.deployment.id)]
    await api.models.DeleteModel(ms.DeleteModelRequest(model_id=prod.model.id))
    await refused(api.model(prod.model.id), grpc.StatusCode.NOT_FOUND, "MODEL_DELETED")
    for deployment in running:
        await refused(api.get(deployment.id), grpc.StatusCode.NOT_FOUND, "DEPLOYMENT_DELETED")
        for replica in deployment.replicas:
            await wait_until(lambda replica=replica: not pid_alive(replica.pid), what="replica to stop")
    assert (await api.models.ListModels(ms.ListModelsRequest())).models == []
    again = await api.push(api.package("m"))
    assert again.model_created and again.model.id != prod.model.id


# --- rename, names, autoscaling validation -------------------------------------------


async def test_published_deployments_get_default_names_and_can_be_renamed(api: Api):
    a = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    b = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    c = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED, name="blue")
    assert [a.deployment.name, b.deployment.name, c.deployment.name] == ["deployment-1", "deployment-2", "blue"]

    renamed = await api.deployments.UpdateDeployment(update_request(a.deployment.id, "name", name="green.v2_1"))
    assert renamed.deployment.name == "green.v2_1"
    before = await snapshot(api, a.model.id)
    for bad, reason in [
        ("has space", "INVALID_DEPLOYMENT_NAME"),
        ("x" * 64, "INVALID_DEPLOYMENT_NAME"),
        ("", "INVALID_DEPLOYMENT_NAME"),
        ("development", "RESERVED_DEPLOYMENT_NAME"),
    ]:
        await refused(
            api.deployments.UpdateDeployment(update_request(b.deployment.id, "name", name=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
            reason,
        )
    await refused(
        api.deployments.UpdateDeployment(update_request(b.deployment.id, "name", name="blue")),
        grpc.StatusCode.ALREADY_EXISTS,
        "DEPLOYMENT_NAME_TAKEN",
    )
    await refused(
        api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED, name="blue"),
        grpc.StatusCode.ALREADY_EXISTS,
        "DEPLOYMENT_NAME_TAKEN",
    )
    assert await snapshot(api, a.model.id) == before
    # Production can be renamed too.
    await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=c.deployment.id))
    await api.wait_production(a.model.id, c.deployment.id)
    prod = await api.deployments.UpdateDeployment(update_request(c.deployment.id, "name", name="prod"))
    assert prod.deployment.name == "prod" and prod.deployment.is_production


async def test_autoscaling_settings_are_validated(api: Api):
    pushed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    did = pushed.deployment.id
    before = await snapshot(api, pushed.model.id)
    for field, value in [
        ("min_replica", -1),
        ("max_replica", 0),
        ("autoscaling_window", 5),
        ("autoscaling_window", 3601),
        ("scale_down_delay", 3601),
        ("concurrency_target", 0),
        ("target_utilization_percentage", 101),
    ]:
        error = await refused(
            api.deployments.UpdateDeployment(update_request(did, f"autoscaling_settings.{field}", **{field: value})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "AUTOSCALING_OUT_OF_RANGE",
        )
        assert field in error.details()
    await refused(
        api.deployments.UpdateDeployment(update_request(did, "autoscaling_settings.min_replica", min_replica=2)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "AUTOSCALING_MAX_BELOW_MIN",
    )
    await refused(
        api.deployments.UpdateDeployment(update_request(did, "package_digest")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPDATE_MASK",
    )
    assert await snapshot(api, pushed.model.id) == before
    ok = await api.deployments.UpdateDeployment(
        update_request(
            did, "autoscaling_settings.min_replica", "autoscaling_settings.max_replica", min_replica=1, max_replica=4
        )
    )
    s = ok.deployment.autoscaling_settings
    assert (s.min_replica, s.max_replica, s.autoscaling_window) == (1, 4, 60)


# --- bad packages, idempotency, pagination, watch -----------------------------------


async def test_malformed_packages_are_refused_and_create_nothing(api: Api):
    await refused(
        api.deployments.CreateDeployment(ds.CreateDeploymentRequest(package_archive=b"not a tarball")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_PACKAGE",
    )
    await refused(
        api.deployments.CreateDeployment(ds.CreateDeploymentRequest(package_archive=b"x", package_sha256="00" * 32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PACKAGE_HASH_MISMATCH",
    )
    no_model_file = api.package("m")
    (no_model_file / "model" / "model.py").unlink()
    await refused(api.push(no_model_file), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_PACKAGE")
    unnamed = api.package("m")
    (unnamed / "config.yaml").write_text("environment_variables: {}\n")
    await refused(api.push(unnamed), grpc.StatusCode.INVALID_ARGUMENT, "MISSING_MODEL_NAME")
    for bad in ("a/b", "x" * 129, " padded", "tab\there"):
        (unnamed / "config.yaml").write_text(f"model_name: {json.dumps(bad)}\n")
        await refused(api.push(unnamed), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL_NAME")
    (unnamed / "config.yaml").write_text("model_name: My Model v2\n")  # Truss allows spaces
    assert (await api.push(unnamed)).model.name == "My Model v2"
    await api.models.DeleteModel(ms.DeleteModelRequest(model_id="My Model v2"))
    await refused(
        api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED, name="bad name"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_DEPLOYMENT_NAME",
    )
    await refused(api.push(api.package("m"), target=99), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PUSH_TARGET")
    assert (await api.models.ListModels(ms.ListModelsRequest())).models == []


async def test_retried_mutations_with_a_request_id_apply_once(api: Api):
    directory = api.package("m")
    first = await api.push(directory, target=ds.PUSH_TARGET_PUBLISHED, request_id="push-1")
    retry = await api.push(directory, target=ds.PUSH_TARGET_PUBLISHED, request_id="push-1")
    assert retry.deployment.id == first.deployment.id and retry.deployment.name == first.deployment.name
    listed = await api.deployments.ListDeployments(ds.ListDeploymentsRequest(model_id="m"))
    assert len(listed.deployments) == 1

    await active(api, first)
    promote = ds.PromoteDeploymentRequest(deployment_id=first.deployment.id, request_id="promote-1")
    assert (await api.deployments.PromoteDeployment(promote)).completed
    assert (await api.deployments.PromoteDeployment(promote)).completed  # not ALREADY_PRODUCTION: same answer
    await refused(
        api.deployments.DeactivateDeployment(
            ds.DeactivateDeploymentRequest(deployment_id=first.deployment.id, request_id="push-1")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    assert (await api.get(first.deployment.id)).active

    # The same request_id for the same method but another request is a reuse, not a retry.
    other = await api.push(directory, target=ds.PUSH_TARGET_PUBLISHED)

    def deactivate(deployment_id):
        return api.deployments.DeactivateDeployment(
            ds.DeactivateDeploymentRequest(deployment_id=deployment_id, request_id="deactivate-1")
        )

    await deactivate(first.deployment.id)
    await refused(deactivate(other.deployment.id), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    assert (await api.get(other.deployment.id)).active
    await refused(
        api.push(api.package("elsewhere"), target=ds.PUSH_TARGET_PUBLISHED, request_id="push-1"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    await refused(api.model("elsewhere"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")


async def test_lists_are_paginated(api: Api):
    ids = []
    for _ in range(5):
        pushed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
        ids.append(pushed.deployment.id)
        await api.deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=pushed.deployment.id))
    seen, token = [], ""
    while True:
        page = await api.deployments.ListDeployments(ds.ListDeploymentsRequest(page_size=2, page_token=token))
        assert len(page.deployments) <= 2
        seen += [d.id for d in page.deployments]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    await refused(
        api.deployments.ListDeployments(ds.ListDeploymentsRequest(page_token="garbage")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    # A token continues the listing it came from, not one with other filters or another collection.
    first = await api.deployments.ListDeployments(ds.ListDeploymentsRequest(page_size=2))
    for other in (
        api.deployments.ListDeployments(
            ds.ListDeploymentsRequest(page_size=2, page_token=first.next_page_token, model_id="m")
        ),
        api.deployments.ListDeployments(
            ds.ListDeploymentsRequest(page_size=2, page_token=first.next_page_token, show_deleted=True)
        ),
        api.models.ListModels(ms.ListModelsRequest(page_token=first.next_page_token)),
    ):
        await refused(other, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")

    # Filters name a model the same way everywhere: by ID or by the name of a live model.
    await api.models.DeleteModel(ms.DeleteModelRequest(model_id="m"))
    deleted = await api.deployments.ListDeployments(
        ds.ListDeploymentsRequest(model_id=pushed.model.id, show_deleted=True)
    )
    assert [d.id for d in deleted.deployments] == ids
    for listing in (
        api.deployments.ListDeployments(ds.ListDeploymentsRequest(model_id="no-such-model", show_deleted=True)),
        api.deployments.ListEvents(ds.ListEventsRequest(model_id="no-such-model")),
        api.deployments.ListUsageRecords(ds.ListUsageRecordsRequest(model_id="no-such-model")),
    ):
        await refused(listing, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    events = await api.deployments.ListEvents(ds.ListEventsRequest(model_id=pushed.model.id))
    assert "model.deleted" in [e.type for e in events.events]


async def test_watch_streams_initial_state_then_changes(api: Api):
    pushed = await api.push(api.package("m"))
    stream = api.deployments.WatchDeployments(ds.WatchDeploymentsRequest(deployment_id=pushed.deployment.id))
    first = await stream.read()
    assert first.initial and first.deployment.id == pushed.deployment.id
    states = [first.deployment.state]
    while states[-1] != ACTIVE:
        message = await stream.read()
        assert not message.initial
        states.append(message.deployment.state)
    stream.cancel()
    assert r.DEPLOYMENT_STATE_LOADING_MODEL in states or r.DEPLOYMENT_STATE_DEPLOYING in states


async def test_a_crashed_replica_is_restarted(api: Api):
    pushed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    running = await active(api, pushed)
    old_pid = running.replicas[0].pid
    os.kill(old_pid, 9)

    async def replaced():
        d = await api.get(pushed.deployment.id)
        return d if d.state == ACTIVE and d.replicas and d.replicas[0].pid != old_pid else None

    restarted = await wait_until(replaced, what="a new replica")
    assert json.loads(await api.predict(restarted))["tag"] == "v1"


async def test_list_events_newest_first_pages_backwards(api: Api):
    pushed = await api.push(api.package("m"))
    await active(api, pushed)
    request = ds.ListEventsRequest(model_id=pushed.model.id, page_size=1000)
    oldest = [e.create_time.ToNanoseconds() for e in (await api.deployments.ListEvents(request)).events]
    everything = [(e.type, e.message) for e in (await api.deployments.ListEvents(request)).events]
    assert len(everything) >= 3

    # Newest first, two at a time: the same events reversed, and the token keeps the direction.
    newest: list[tuple[str, str]] = []
    token = ""
    while True:
        page = await api.deployments.ListEvents(
            ds.ListEventsRequest(
                model_id=pushed.model.id, page_size=2, page_token=token, order=ds.EVENT_ORDER_NEWEST_FIRST
            )
        )
        assert len(page.events) <= 2
        newest += [(e.type, e.message) for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert newest == everything[::-1]
    assert oldest == sorted(oldest)
    explicit = await api.deployments.ListEvents(
        ds.ListEventsRequest(model_id=pushed.model.id, page_size=1000, order=ds.EVENT_ORDER_OLDEST_FIRST)
    )
    assert [(e.type, e.message) for e in explicit.events] == everything

    # A token of one direction does not continue the other; an unknown order is refused.
    first = await api.deployments.ListEvents(
        ds.ListEventsRequest(model_id=pushed.model.id, page_size=1, order=ds.EVENT_ORDER_NEWEST_FIRST)
    )
    await refused(
        api.deployments.ListEvents(
            ds.ListEventsRequest(model_id=pushed.model.id, page_size=1, page_token=first.next_page_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    await refused(
        api.deployments.ListEvents(ds.ListEventsRequest(model_id=pushed.model.id, order=7)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EVENT_ORDER",
    )
