"""Promotion into an environment (production or a named one), in one place: what a promote
call does in its transaction, starting, failing and cancelling one in flight, and the final
step, `finish_promotion`, which the reconciler's observations take too once a candidate is
ready.

`point_environment` is the one function that makes an environment route to a deployment: at
once. A promotion's final step is `finish_promotion`: under the environment's rolling policy it
starts a traffic ramp instead (controller/rollout_environments.py), over the same records (the
environment's deployment and its candidate, `promoting_deployment_id`), and the rollout engine
(controller/rollouts.py) points the environment once the ramp succeeds.
"""

from __future__ import annotations

from collections.abc import Callable

from controller import domain, environments, rollout_environments, validation
from controller.domain import AutoscalingLimits, Deployment, Kind, Model, PromotionKind
from controller.environments import Environment
from controller.errors import NotFound
from controller.lookups import require_deployment
from controller.store import Store, WriteTx, new_id


async def require_environment(reads: WriteTx | Store, model: Model, name: str) -> Environment:
    environments.validate_name(name)
    environment = await reads.get_environment(model.id, name)
    if environment is None:
        raise NotFound(
            "ENVIRONMENT_NOT_FOUND",
            f"model {model.name} ({model.id}) has no environment {name!r}: create it first",
            model_id=model.id,
            environment=name,
        )
    return environment


def _described(environment: str) -> str:
    return "production" if environment == environments.PRODUCTION else f"the {environment} deployment"


async def point_environment(tx: WriteTx, environment: Environment, deployment: Deployment, at: float) -> None:
    """Environment `environment` takes its traffic from `deployment` from now on, and its
    promotion in flight ends. The deployment it replaces keeps its ID, settings and activity
    (it stays published); `deployment` leaves the environment it was in, if any (a move), and
    keeps its own settings, which become the environment's."""
    model_id = environment.model_id
    if deployment.environment and deployment.environment != environment.name:
        await tx.update_environment(model_id, deployment.environment, at, deployment_id=None)
        await tx.add_event(
            at,
            model_id,
            deployment.id,
            "environment.deployment_changed",
            f"{deployment.name!r} ({deployment.id}) moved to {environment.name}: "
            f"{deployment.environment} has no deployment until one is promoted into it",
            deployment.environment,
        )
    await tx.update_environment(
        model_id,
        environment.name,
        at,
        deployment_id=deployment.id,
        promoting_deployment_id=None,
        autoscaling=deployment.autoscaling,
    )
    former = f" (replacing {environment.deployment_id})" if environment.deployment_id else ""
    kind = "model.production_changed" if environment.is_production else "environment.deployment_changed"
    await tx.add_event(
        at,
        model_id,
        deployment.id,
        kind,
        f"{deployment.name!r} ({deployment.id}) is now {_described(environment.name)}{former}",
        environment.name,
    )


async def finish_promotion(tx: WriteTx, environment: Environment, deployment: Deployment, at: float) -> bool:
    """A promotion's final step, once its candidate is ready: a rollout starts under a
    rolling policy (the environment changes when it succeeds), else the environment points at
    the candidate now. Whether it switched now."""
    if await rollout_environments.begin_if_rolling(tx, environment, deployment, at):
        return False
    await point_environment(tx, environment, deployment, at)
    return True


async def start_promotion(tx: WriteTx, environment: Environment, deployment: Deployment, at: float) -> None:
    """`deployment` becomes the environment's once it is ready (Observations.record_observed)."""
    await tx.update_environment(environment.model_id, environment.name, at, promoting_deployment_id=deployment.id)
    await tx.add_event(
        at,
        environment.model_id,
        deployment.id,
        "model.promotion_started",
        f"{deployment.name!r} becomes {_described(environment.name)} once it is ready",
        environment.name,
    )


async def _end_promotion(
    tx: WriteTx, deployment: Deployment, at: float, event: str, message: Callable[[str], str]
) -> None:
    """The promotion of `deployment` (if any) ends without a switch: its environment is unchanged."""
    name = deployment.promoting_environment
    if not name:
        return
    await tx.update_environment(deployment.model_id, name, at, promoting_deployment_id=None)
    await tx.add_event(at, deployment.model_id, deployment.id, event, message(name), name)


async def fail_promotion(tx: WriteTx, deployment: Deployment, at: float, why: str) -> None:
    """The candidate did not become ready."""
    await _end_promotion(
        tx,
        deployment,
        at,
        "model.promotion_failed",
        lambda name: f"{deployment.name!r} did not become ready ({why}); {name} unchanged",
    )


async def cancel_promotion_of(tx: WriteTx, deployment: Deployment, at: float, why: str) -> None:
    await _end_promotion(tx, deployment, at, "model.promotion_cancelled", lambda _: f"promotion cancelled: {why}")


async def create_published(
    tx: WriteTx,
    model: Model,
    digest: str,
    name: str,
    at: float,
    limits: AutoscalingLimits,
    into: Environment | None = None,
    source: Deployment | None = None,
) -> Deployment:
    """A new published deployment (a push with --publish or --promote, or step 1 of promoting
    development). Promoted `into` an environment, it takes the environment's autoscaling settings
    and becomes its deployment once it is ready."""
    taken = await tx.deployment_names(model.id, name or None)  # all of them to choose a default name
    next_number = model.next_deployment_number
    if name:
        validation.require_unique_name(name, taken, model.id)
    else:
        name, next_number = validation.default_deployment_name(next_number, taken)
    autoscaling = into.settings(limits) if into is not None else limits.defaults
    deployment = domain.new_deployment(
        new_id("d"), model.id, name, Kind.PUBLISHED, autoscaling, digest, at, source.id if source else None
    )
    await tx.insert_deployment(deployment)
    await tx.update_model(model.id, at, next_deployment_number=next_number)
    origin = f" from development {source.id}" if source else ""
    await tx.add_event(
        at, model.id, deployment.id, "deployment.created", f"published deployment {name!r} created{origin}"
    )
    if into is not None:
        await start_promotion(tx, into, deployment, at)
    return await require_deployment(tx, deployment.id)


async def promote(
    tx: WriteTx, model: Model, environment: Environment, deployment: Deployment, at: float, limits: AutoscalingLimits
) -> tuple[Deployment, bool]:
    """Promotes `deployment` into `environment`: (the deployment that is or will be the
    environment's, whether it switched already). Development: a new published deployment is
    created and switched in once ready (the three steps); a published one keeps its ID and
    settings and switches now if it serves (or is scaled to zero), else once it is ready."""
    plan = environments.plan_promotion(model, environment, deployment)
    if plan is PromotionKind.FROM_DEVELOPMENT:
        created = await create_published(
            tx, model, deployment.package_digest, "", at, limits, into=environment, source=deployment
        )
        return created, False
    if plan is PromotionKind.IMMEDIATE:
        switched = await finish_promotion(tx, environment, deployment, at)
        return await require_deployment(tx, deployment.id), switched
    await start_promotion(tx, environment, deployment, at)
    return await require_deployment(tx, deployment.id), False
