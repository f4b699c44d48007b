"""Where rolling promotions meet environments (controller/environments.py, controller/promotion.py):
which environment a caller names, how a promotion's final step starts a rollout, and the
weighted deployments an environment's route lists. Every environment — production and named
ones such as `staging` — rolls the same way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from controller import environments
from controller.domain import Deployment
from controller.environments import Environment
from controller.errors import InvalidArgument
from controller.rollout_rules import (
    ACTIVE_STATES,
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


def require_environment(environment: str) -> str:
    """The environment a caller names ("" is production): a valid name, not development
    (whether the model has it is checked with the model: promotion.require_environment)."""
    environment = environment or environments.PRODUCTION
    if environment == environments.DEVELOPMENT:
        raise InvalidArgument(
            "ENVIRONMENT_NOT_ROLLABLE", "development is updated in place: it has no promotions to roll out"
        )
    environments.validate_name(environment)
    return environment


async def begin_if_rolling(tx: WriteTx, environment: Environment, deployment: Deployment, at: float) -> bool:
    """A promotion's final step: True when the environment's policy rolls it (a rollout
    begins, or is already under way for this candidate); False to switch at once (a
    promotion with a previous deployment is then recorded as a succeeded one-step rollout,
    so that RollbackEnvironment can undo it)."""
    model_id, name = environment.model_id, environment.name
    current = next((r for r in await tx.active_rollouts([model_id]) if r.environment == name), None)
    if current is not None and current.candidate_id == deployment.id:
        return True
    if current is not None:  # its promotion was cancelled, and the engine has not ended it yet
        why = f"superseded by the promotion of {deployment.id} (the promotion of {current.candidate_id} was cancelled)"
        await tx.update_rollout(end(current, RolloutState.FAILED, "candidate_failed", why, at))
        await tx.add_event(at, model_id, current.candidate_id, "rollout.failed", why, name)
    previous_id = environment.deployment_id
    previous = await tx.get_deployment(previous_id) if previous_id and previous_id != deployment.id else None
    if previous is None:
        return False
    stored = await tx.get_rollout_policy(model_id, name)
    policy = stored[0] if stored else UNSET_POLICY
    rolling = policy.mode is Mode.ROLLING
    steps = schedule(policy) if rolling else (Step(100, 0.0),)
    rollout = Rollout(
        id=new_id("ro"),
        model_id=model_id,
        environment=name,
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
    await tx.update_environment(model_id, name, at, promoting_deployment_id=deployment.id)
    plan = ", ".join(f"{s.percent}% for {s.hold_seconds:g} s" for s in steps)
    await tx.add_event(
        at,
        model_id,
        deployment.id,
        "rollout.started",
        f"rolling {deployment.name!r} ({deployment.id}) into {name} in place of {previous.id}: {plan}",
        name,
    )
    return True


def weighted_deployments(environment: Environment, rollout: Rollout | None) -> list[rt.WeightedDeployment]:
    """An environment's deployments with their weights, the candidate first (so a request ID
    that reached it at a smaller share still does at a larger one)."""
    previous = environment.deployment_id
    if (
        rollout is None
        or not rollout.active
        or environment.promoting_deployment_id != rollout.candidate_id
        or previous != rollout.previous_id
        or rollout.candidate_percent <= 0
    ):
        return [rt.WeightedDeployment(deployment_id=previous, weight=100)] if previous else []
    shares = [(rollout.candidate_id, rollout.candidate_percent), (rollout.previous_id, 100 - rollout.candidate_percent)]
    return [rt.WeightedDeployment(deployment_id=d, weight=w) for d, w in shares if w > 0]


def active_by_environment(rollouts: Iterable[Rollout]) -> dict[tuple[str, str], Rollout]:
    """The rollout in progress of each (model, environment): what its route lists."""
    return {(r.model_id, r.environment): r for r in rollouts if r.state in ACTIVE_STATES}
