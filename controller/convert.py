"""Translation between domain records and slipway.v1 protobuf messages."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from google.protobuf import timestamp_pb2

from controller.domain import AUTOSCALING_FIELDS, Deployment, Kind, Model, PushTarget
from controller.errors import InvalidArgument
from controller.live_reload import PatchOutcome, PatchResult
from controller.packages import FilePatch
from controller.replica_runtime import ReplicaHandle
from controller.rollout_rules import Rollout, RolloutState
from controller.store import ApiKeyRow, EventRow, UsageRow
from slipway.keys import SCOPE_FROM_PROTO, SCOPE_TO_PROTO, Scope, display_prefix
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import key_service_pb2 as ks
from slipway.v1 import resources_pb2 as r
from slipway.v1 import rollout_service_pb2 as ro

ROLLOUT_STATES: dict[RolloutState, ro.RolloutState] = {
    state: getattr(ro, f"ROLLOUT_STATE_{state.value}") for state in RolloutState
}

KINDS = {Kind.DEVELOPMENT: r.DEPLOYMENT_KIND_DEVELOPMENT, Kind.PUBLISHED: r.DEPLOYMENT_KIND_PUBLISHED}
PUSH_TARGETS: dict[int, PushTarget] = {
    ds.PUSH_TARGET_UNSPECIFIED: PushTarget.DEVELOPMENT,
    ds.PUSH_TARGET_DEVELOPMENT: PushTarget.DEVELOPMENT,
    ds.PUSH_TARGET_PUBLISHED: PushTarget.PUBLISHED,
    ds.PUSH_TARGET_PRODUCTION: PushTarget.PRODUCTION,
}


def push_target(value: int) -> PushTarget:
    if value not in PUSH_TARGETS:
        raise InvalidArgument("INVALID_PUSH_TARGET", f"target {value} is not a PushTarget value")
    return PUSH_TARGETS[value]


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def api_key_to_proto(row: ApiKeyRow) -> ks.ApiKey:
    return ks.ApiKey(
        id=row.id,
        name=row.name,
        scope=SCOPE_TO_PROTO[Scope(row.scope)],
        model_ids=row.model_ids,
        display_prefix=display_prefix(row.id),
        create_time=timestamp(row.create_time),
        last_used_time=timestamp(row.last_used_time),
        expire_time=timestamp(row.expire_time),
        revoke_time=timestamp(row.revoke_time),
    )


def scope_from_proto(value: int) -> Scope:
    if value in SCOPE_FROM_PROTO:
        return SCOPE_FROM_PROTO[value]
    raise InvalidArgument("INVALID_KEY_SCOPE", "scope must be one of admin, deploy, inference, metrics")


def model_to_proto(model: Model, rollouts: Iterable[Rollout] = ()) -> r.Model:
    """`rollouts`: the model's rollouts in progress (shown on the model)."""
    return r.Model(
        id=model.id,
        name=model.name,
        production_deployment_id=model.production_deployment_id or "",
        development_deployment_id=model.development_deployment_id or "",
        promoting_deployment_id=model.promoting_deployment_id or "",
        create_time=timestamp(model.create_time),
        update_time=timestamp(model.update_time),
        delete_time=timestamp(model.delete_time),
        deployment_count=model.deployment_count,
        rollouts=[
            r.ModelRollout(
                environment=rollout.environment,
                rollout_id=rollout.id,
                state=ROLLOUT_STATES[rollout.state],
                candidate_deployment_id=rollout.candidate_id,
                previous_deployment_id=rollout.previous_id,
                candidate_percent=rollout.candidate_percent,
                message=rollout.message,
            )
            for rollout in rollouts
            if rollout.model_id == model.id
        ],
    )


def replica_to_proto(handle: ReplicaHandle) -> r.Replica:
    return r.Replica(
        id=handle.id,
        address=handle.address,
        state=f"REPLICA_STATE_{handle.phase.value}",
        pid=handle.pid or 0,
        start_time=timestamp(handle.start_time),
        revision=handle.revision,
    )


def deployment_to_proto(deployment: Deployment, replicas: Sequence[ReplicaHandle] = ()) -> r.Deployment:
    return r.Deployment(
        id=deployment.id,
        model_id=deployment.model_id,
        name=deployment.name,
        kind=KINDS[deployment.kind],
        is_production=deployment.is_production,
        active=deployment.active,
        state=f"DEPLOYMENT_STATE_{deployment.state.value}",
        status_message=deployment.status_message,
        autoscaling_settings=r.AutoscalingSettings(**dataclasses.asdict(deployment.autoscaling)),
        package_digest=deployment.package_digest,
        desired_replicas=deployment.desired_replicas,
        ready_replicas=deployment.ready_replicas,
        create_time=timestamp(deployment.create_time),
        update_time=timestamp(deployment.update_time),
        delete_time=timestamp(deployment.delete_time),
        source_deployment_id=deployment.source_deployment_id or "",
        revision=deployment.revision,
        replicas=[replica_to_proto(h) for h in replicas if not h.exited],
        environment=deployment.environment or "",
        promoting_environment=deployment.promoting_environment or "",
    )


def usage_to_proto(row: UsageRow, days: Iterable[tuple[str, float, int]] = ()) -> r.UsageRecord:
    return r.UsageRecord(
        days=[
            r.DailyUsage(date=date, replica_seconds=seconds, replica_starts=starts) for date, seconds, starts in days
        ],
        model_id=row.model_id,
        deployment_id=row.deployment_id,
        deployment_name=row.deployment_name,
        replica_seconds=row.replica_seconds,
        replica_starts=row.replica_starts,
        deployment_deleted=row.deployment_deleted,
        environment=row.environment,
    )


def event_to_proto(row: EventRow) -> r.Event:
    return r.Event(
        sequence=row.seq,
        create_time=timestamp(row.create_time),
        model_id=row.model_id,
        deployment_id=row.deployment_id,
        type=row.type,
        message=row.message,
        environment=row.environment,
    )


def update_from_proto(request: ds.UpdateDeploymentRequest) -> tuple[str | None, dict[str, int]]:
    """(new name or None, {autoscaling field: value}) from an UpdateDeployment request.

    With an update mask, exactly the listed paths (`autoscaling_settings` replaces all
    six settings); without one, every updatable field that is set (AIP-134). The
    settings have no presence (plain proto3 scalars), so without a mask a zero means
    unset: setting min_replica or scale_down_delay to 0 takes a mask that names it.
    """
    deployment = request.deployment
    paths = list(request.update_mask.paths)
    if not paths:
        if deployment.name:
            paths.append("name")
        settings = deployment.autoscaling_settings
        paths += [f"autoscaling_settings.{f}" for f in AUTOSCALING_FIELDS if getattr(settings, f)]
        if not paths:
            raise InvalidArgument(
                "EMPTY_UPDATE",
                "nothing to update: without an update_mask only the fields set to non-empty, non-zero values "
                "are updated; to set an autoscaling setting to 0, name it in update_mask "
                "(for example autoscaling_settings.min_replica)",
            )
    name: str | None = None
    changes: dict[str, int] = {}
    for path in paths:
        if path == "name":
            name = deployment.name
        elif path == "autoscaling_settings":
            changes.update({f: getattr(deployment.autoscaling_settings, f) for f in AUTOSCALING_FIELDS})
        elif path.startswith("autoscaling_settings.") and path.split(".", 1)[1] in AUTOSCALING_FIELDS:
            field = path.split(".", 1)[1]
            changes[field] = getattr(deployment.autoscaling_settings, field)
        else:
            updatable = ", ".join(
                ["name", "autoscaling_settings"] + [f"autoscaling_settings.{f}" for f in AUTOSCALING_FIELDS]
            )
            raise InvalidArgument(
                "INVALID_UPDATE_MASK", f"update_mask path {path!r} is not updatable (updatable: {updatable})", path=path
            )
    return name, changes


PATCH_RESULTS = {
    PatchResult.APPLIED_IN_PLACE: ds.PATCH_RESULT_APPLIED_IN_PLACE,
    PatchResult.RESTARTED: ds.PATCH_RESULT_RESTARTED,
    PatchResult.FAILED: ds.PATCH_RESULT_FAILED,
    PatchResult.STORED: ds.PATCH_RESULT_STORED,
}


def patches_from_proto(patches) -> list[FilePatch]:
    return [FilePatch(path=p.path, content=p.content, delete=p.delete) for p in patches]


def patch_response(outcome: PatchOutcome, deployment: r.Deployment) -> ds.PatchDeploymentResponse:
    return ds.PatchDeploymentResponse(
        deployment=deployment,
        package_digest=outcome.deployment.patch_base_digest,
        result=PATCH_RESULTS[outcome.result],
        error=outcome.error,
        traceback=outcome.traceback,
        apply_seconds=outcome.apply_seconds,
        warnings=list(outcome.warnings),
    )
