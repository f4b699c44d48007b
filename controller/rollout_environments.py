"""Where rolling promotions meet environments: which environment a caller names, which
deployment an environment points at, how a promotion's final step starts a rollout, and the
weighted deployments an environment's route lists. Production is the one environment
until named environments (issue 16 item 1) merge: they plug in here."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from controller.domain import Deployment, Model
from controller.errors import InvalidArgument, NotFound
from controller.rollout_rules import (
    ACTIVE_STATES,
    PRODUCTION,
    UNSET_POLICY,
    Mode,
    Rollout,
    RolloutState,
    Step,
    end,
    schedule,
)
from controller.store import WriteTx, new_id
from slipway.v1 import route_service_pb2 as rt

ENVIRONMENT_PATTERN = re.compile(r"[a-z0-9-]{1,32}")


def require_environment(environment: str) -> str:
    """The environment a caller names ("" is production). Named environments arrive with
    issue 16 item 1 (branch `envs`): until then only production has a deployment to roll."""
    environment = environment or PRODUCTION
    if environment == PRODUCTION:
        return environment
    if environment == "development":
        raise InvalidArgument(
            "ENVIRONMENT_NOT_ROLLABLE", "development is updated in place: it has no promotions to roll out"
        )
    if not ENVIRONMENT_PATTERN.fullmatch(environment):
        raise InvalidArgument(
            "INVALID_ENVIRONMENT_NAME", f"environment {environment[:64]!r} does not match ^[a-z0-9-]{{1,32}}$"
        )
    raise NotFound("ENVIRONMENT_NOT_FOUND", f"no environment {environment!r}", environment=environment)


def environment_deployment(model: Model, environment: str) -> str | None:
    """The deployment an environment points at (production's, until named environments)."""
    return model.production_deployment_id if environment == PRODUCTION else None


async def begin_if_rolling(tx: WriteTx, model: Model, deployment: Deployment, at: float) -> bool:
    """A promotion's final step: True when the environment's policy rolls it (a rollout
    begins, or is already under way for this candidate); False to switch at once (a
    promotion with a previous deployment is then recorded as a succeeded one-step rollout,
    so that RollbackEnvironment can undo it)."""
    environment = PRODUCTION
    current = next((r for r in await tx.active_rollouts([model.id]) if r.environment == environment), None)
    if current is not None and current.candidate_id == deployment.id:
        return True
    if current is not None:  # its promotion was cancelled, and the engine has not ended it yet
        why = f"superseded by the promotion of {deployment.id} (the promotion of {current.candidate_id} was cancelled)"
        await tx.update_rollout(end(current, RolloutState.FAILED, "candidate_failed", why, at))
        await tx.add_event(at, model.id, current.candidate_id, "rollout.failed", why)
    previous_id = environment_deployment(model, environment)
    previous = await tx.get_deployment(previous_id) if previous_id and previous_id != deployment.id else None
    if previous is None:
        return False
    stored = await tx.get_rollout_policy(model.id, environment)
    policy = stored[0] if stored else UNSET_POLICY
    rolling = policy.mode is Mode.ROLLING
    steps = schedule(policy) if rolling else (Step(100, 0.0),)
    rollout = Rollout(
        id=new_id("ro"),
        model_id=model.id,
        environment=environment,
        candidate_id=deployment.id,
        previous_id=previous.id,
        state=RolloutState.RELEASING,
        trigger="promotion",
        message=f"scaling {deployment.name!r} to carry {steps[0].percent}% before it takes traffic",
        steps=steps,
        thresholds=policy.thresholds,
        step_index=-1,
        candidate_percent=0,
        base_replicas=max(previous.desired_replicas, previous.ready_replicas, 1),
        create_time=at,
        update_time=at,
        keep_warm_seconds=policy.keep_previous_warm_seconds,
    )
    if not rolling:
        warm = (
            f"; {previous.id} kept warm for {policy.keep_previous_warm_seconds:g} s"
            if rollout.keep_warm_seconds
            else ""
        )
        await tx.insert_rollout(
            end(replace(rollout, step_index=0), RolloutState.SUCCEEDED, "promotion", f"promoted at once{warm}", at)
        )
        return False
    await tx.insert_rollout(rollout)
    await tx.update_model(model.id, at, promoting_deployment_id=deployment.id)
    plan = ", ".join(f"{s.percent}% for {s.hold_seconds:g} s" for s in steps)
    await tx.add_event(
        at,
        model.id,
        deployment.id,
        "rollout.started",
        f"rolling {deployment.name!r} ({deployment.id}) into {environment} in place of {previous.id}: {plan}",
    )
    return True


def weighted_deployments(model: Model, rollout: Rollout | None) -> list[rt.WeightedDeployment]:
    """An environment's deployments with their weights, the candidate first (so a request ID
    that reached it at a smaller share still does at a larger one)."""
    previous = environment_deployment(model, rollout.environment if rollout else PRODUCTION)
    if (
        rollout is None
        or not rollout.active
        or model.promoting_deployment_id != rollout.candidate_id
        or previous != rollout.previous_id
        or rollout.candidate_percent <= 0
    ):
        return [rt.WeightedDeployment(deployment_id=previous, weight=100)] if previous else []
    shares = [(rollout.candidate_id, rollout.candidate_percent), (rollout.previous_id, 100 - rollout.candidate_percent)]
    return [rt.WeightedDeployment(deployment_id=d, weight=w) for d, w in shares if w > 0]


def active_by_model(rollouts: Iterable[Rollout]) -> dict[str, Rollout]:
    """The production rollout in progress of each model (what its route lists)."""
    return {r.model_id: r for r in rollouts if r.state in ACTIVE_STATES and r.environment == PRODUCTION}
