"""RolloutService: protobuf in, one call on controller/rollouts.py, protobuf out."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from google.protobuf import timestamp_pb2

from controller.convert import ROLLOUT_STATES
from controller.errors import InvalidArgument
from controller.rollout_rules import Figures, Mode, Policy, Rollout, Step
from controller.rollouts import Rollouts
from controller.status import map_domain_errors
from slipway.v1 import rollout_service_pb2 as ro
from slipway.v1 import rollout_service_pb2_grpc as ro_grpc

MODES = {Mode.IMMEDIATE: ro.ROLLOUT_MODE_IMMEDIATE, Mode.ROLLING: ro.ROLLOUT_MODE_ROLLING}
MODES_FROM_PROTO = {v: k for k, v in MODES.items()}
# The policy fields UpdateRolloutPolicy's update_mask may name.
POLICY_FIELDS = (
    "mode",
    "max_surge_percent",
    "stabilization_seconds",
    "steps",
    "auto_rollback",
    "max_error_rate_increase_points",
    "max_p99_ratio",
    "latency_floor_seconds",
    "min_requests",
    "keep_previous_warm_seconds",
)
MAX_STEPS_SENT = 100  # refused beyond the policy limits anyway; bounds what is parsed


def _time(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def figures_to_proto(figures: Figures) -> ro.RolloutFigures:
    return ro.RolloutFigures(
        requests=figures.requests, errors=figures.errors, error_rate=figures.error_rate, p99_seconds=figures.p99
    )


def steps_to_proto(steps: tuple[Step, ...]) -> list[ro.RolloutStep]:
    return [ro.RolloutStep(percent=s.percent, hold_seconds=s.hold_seconds) for s in steps]


def rollout_to_proto(rollout: Rollout) -> ro.Rollout:
    return ro.Rollout(
        id=rollout.id,
        model_id=rollout.model_id,
        environment=rollout.environment,
        candidate_deployment_id=rollout.candidate_id,
        previous_deployment_id=rollout.previous_id,
        state=ROLLOUT_STATES[rollout.state],
        trigger=rollout.trigger,
        message=rollout.message,
        steps=steps_to_proto(rollout.steps),
        step_index=rollout.step_index,
        candidate_percent=rollout.candidate_percent,
        candidate_step_figures=figures_to_proto(rollout.candidate_step),
        previous_step_figures=figures_to_proto(rollout.previous_step),
        previous_total_figures=figures_to_proto(rollout.previous_total),
        create_time=_time(rollout.create_time),
        update_time=_time(rollout.update_time),
        end_time=_time(rollout.end_time),
        step_start_time=_time(rollout.step_start_time),
        keep_warm_until=_time(rollout.keep_warm_until),
    )


def policy_to_proto(model_id: str, environment: str, policy: Policy, update_time: float | None) -> ro.RolloutPolicy:
    t = policy.thresholds
    return ro.RolloutPolicy(
        model_id=model_id,
        environment=environment,
        mode=MODES[policy.mode],
        max_surge_percent=policy.max_surge_percent,
        stabilization_seconds=policy.stabilization_seconds,
        steps=steps_to_proto(policy.steps),
        auto_rollback=t.auto_rollback,
        max_error_rate_increase_points=t.max_error_rate_increase * 100,
        max_p99_ratio=t.max_p99_ratio,
        latency_floor_seconds=t.latency_floor_seconds,
        min_requests=t.min_requests,
        keep_previous_warm_seconds=policy.keep_previous_warm_seconds,
        update_time=_time(update_time),
    )


def policy_changes(request: ro.UpdateRolloutPolicyRequest):
    """The change an UpdateRolloutPolicy asks for, as a function of the stored policy (the
    fields its mask names; without a mask, those set to non-zero values and the steps)."""
    sent = request.policy
    paths = list(request.update_mask.paths)
    if not paths:
        paths = [f for f in POLICY_FIELDS if f != "steps" and getattr(sent, f)]
        if sent.steps:
            paths.append("steps")
        if not paths:
            raise InvalidArgument(
                "EMPTY_UPDATE",
                "nothing to update: without an update_mask only the fields set to non-zero values are updated; "
                "to set one to 0 or false (or clear steps), name it in update_mask",
            )
    for path in paths:
        if path not in POLICY_FIELDS:
            raise InvalidArgument(
                "INVALID_UPDATE_MASK",
                f"update_mask path {path[:64]!r} is not updatable (updatable: {', '.join(POLICY_FIELDS)})",
                path=path[:64],
            )
    if "mode" in paths and sent.mode not in MODES_FROM_PROTO:
        raise InvalidArgument("INVALID_ROLLOUT_POLICY", f"mode {sent.mode} is not ROLLOUT_MODE_IMMEDIATE or _ROLLING")
    if len(sent.steps) > MAX_STEPS_SENT:
        raise InvalidArgument("INVALID_ROLLOUT_STEPS", f"at most {MAX_STEPS_SENT} steps (got {len(sent.steps)})")
    steps = tuple(Step(s.percent, s.hold_seconds) for s in sent.steps)

    def apply(policy: Policy) -> Policy:
        values: dict = {}
        thresholds: dict = {}
        for path in paths:
            if path == "mode":
                values["mode"] = MODES_FROM_PROTO[sent.mode]
            elif path == "steps":
                values["steps"] = steps
            elif path in ("max_surge_percent", "stabilization_seconds", "keep_previous_warm_seconds"):
                values[path] = getattr(sent, path)
            elif path == "max_error_rate_increase_points":
                thresholds["max_error_rate_increase"] = sent.max_error_rate_increase_points / 100
            else:
                thresholds[path] = getattr(sent, path)
        return replace(policy, **values, thresholds=replace(policy.thresholds, **thresholds))

    fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    return apply, fingerprint


@map_domain_errors
class RolloutServicer(ro_grpc.RolloutServiceServicer):
    def __init__(self, rollouts: Rollouts) -> None:
        self.rollouts = rollouts

    async def GetRollout(self, request, context):
        rollout = await self.rollouts.get(request.model_id, request.environment, request.rollout_id)
        return ro.GetRolloutResponse(rollout=rollout_to_proto(rollout))

    async def ListRollouts(self, request, context):
        page = await self.rollouts.list(request.model_id, request.environment, request.page_size, request.page_token)
        return ro.ListRolloutsResponse(
            rollouts=[rollout_to_proto(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def PauseRollout(self, request, context):
        rollout = await self.rollouts.pause(request.model_id, request.environment, request.request_id)
        return ro.PauseRolloutResponse(rollout=rollout_to_proto(rollout))

    async def ResumeRollout(self, request, context):
        rollout = await self.rollouts.resume(request.model_id, request.environment, request.request_id)
        return ro.ResumeRolloutResponse(rollout=rollout_to_proto(rollout))

    async def CancelRollout(self, request, context):
        rollout = await self.rollouts.cancel(request.model_id, request.environment, request.request_id)
        return ro.CancelRolloutResponse(rollout=rollout_to_proto(rollout))

    async def CompleteRollout(self, request, context):
        rollout = await self.rollouts.complete(request.model_id, request.environment, request.request_id)
        return ro.CompleteRolloutResponse(rollout=rollout_to_proto(rollout))

    async def RollbackEnvironment(self, request, context):
        rollout, deployment_id = await self.rollouts.rollback(request.model_id, request.environment, request.request_id)
        return ro.RollbackEnvironmentResponse(rollout=rollout_to_proto(rollout), deployment_id=deployment_id)

    async def GetRolloutPolicy(self, request, context):
        model_id, environment, policy, at = await self.rollouts.get_policy(request.model_id, request.environment)
        return ro.GetRolloutPolicyResponse(policy=policy_to_proto(model_id, environment, policy, at))

    async def UpdateRolloutPolicy(self, request, context):
        changes, fingerprint = policy_changes(request)
        model_id, environment, policy, at = await self.rollouts.update_policy(
            request.policy.model_id, request.policy.environment, changes, request.request_id, fingerprint
        )
        return ro.UpdateRolloutPolicyResponse(policy=policy_to_proto(model_id, environment, policy, at))
