"""Environments as pure rules (no gRPC, no SQL): what a model's environments are, which names
they may have, and what a promotion into one may do.

Every model has `production`, from its creation until it is deleted, and any number of
named environments (`staging`, `canary-eu`, ...). Each environment routes to at most one
deployment (its endpoint: `/model/{id}/environments/{name}/predict`), has at most one
promotion in flight, and has its own autoscaling settings: those of its deployment while it
has one (they change together), which a deployment created by promoting development into it
takes. The seed's production rules apply to every environment.

A deployment is in at most one environment. Promoting the deployment of one named environment
into another *moves* it (the environment it leaves has no deployment until another is promoted
there); the production deployment cannot be moved out (production is never left without one,
as it cannot be deleted). Deleting an environment leaves its deployment published, with its ID,
settings and activity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controller.domain import (
    AutoscalingLimits,
    AutoscalingSettings,
    Deployment,
    Model,
    PromotionKind,
    promotion_kind,
    require_not_deleted,
)
from controller.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted

PRODUCTION = "production"
DEVELOPMENT = "development"
RESERVED_NAMES = frozenset({PRODUCTION, DEVELOPMENT})
# Matched whole (fullmatch).
ENVIRONMENT_NAME_PATTERN = re.compile(r"[a-z0-9-]{1,32}")
# Named environments a model may have besides production (operator configuration).
DEFAULT_MAX_ENVIRONMENTS = 32


@dataclass(frozen=True)
class Environment:
    model_id: str
    name: str
    # The deployment that takes the environment's traffic; None until one is promoted into it.
    deployment_id: str | None
    # The deployment being promoted into it (it takes the traffic once it is ready).
    promoting_deployment_id: str | None
    # None: the operator's defaults (an environment that never had a deployment, or was created without).
    autoscaling: AutoscalingSettings | None
    create_time: float
    update_time: float
    delete_time: float | None = None

    @property
    def is_production(self) -> bool:
        return self.name == PRODUCTION

    def settings(self, limits: AutoscalingLimits) -> AutoscalingSettings:
        """The autoscaling settings a deployment promoted from development into it gets."""
        return self.autoscaling or limits.defaults


def validate_name(name: str) -> None:
    """A reference to an environment: any name it could have (production included)."""
    if not ENVIRONMENT_NAME_PATTERN.fullmatch(name):
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise InvalidArgument(
            "INVALID_ENVIRONMENT_NAME",
            f"environment name {shown!r} must be 1-32 characters of lowercase letters, digits and '-'",
            environment=shown,
        )


def check_create(name: str, existing: list[Environment], limit: int) -> None:
    validate_name(name)
    if name in RESERVED_NAMES:
        raise InvalidArgument(
            "RESERVED_ENVIRONMENT_NAME",
            f"{name!r} is reserved: every model has production, and development is its development deployment",
            environment=name,
        )
    if any(e.name == name for e in existing):
        raise AlreadyExists("ENVIRONMENT_EXISTS", f"the model already has an environment {name!r}", environment=name)
    named = sum(1 for e in existing if not e.is_production)
    if named >= limit:
        raise ResourceExhausted(
            "TOO_MANY_ENVIRONMENTS",
            f"a model has at most {limit} environments besides production: delete one first",
            environment=name,
        )


def check_delete(environment: Environment) -> None:
    if environment.is_production:
        raise FailedPrecondition(
            "PRODUCTION_ENVIRONMENT_NOT_DELETABLE",
            f"production always exists: it is deleted only with model {environment.model_id}",
            environment=PRODUCTION,
        )


def check_autoscaling_change(environment: Environment) -> None:
    """An environment's settings change with its deployment's: not while another is on its way in,
    which would take the traffic with the settings it has."""
    require_no_promotion_in_flight(environment)


def require_no_promotion_in_flight(environment: Environment) -> None:
    if environment.promoting_deployment_id:
        raise Aborted(
            "PROMOTION_IN_PROGRESS",
            f"model {environment.model_id} is already promoting deployment {environment.promoting_deployment_id} "
            f"into {environment.name}; wait for it to finish",
            model_id=environment.model_id,
            deployment_id=environment.promoting_deployment_id,
            environment=environment.name,
        )


def check_target(model: Model, environment: Environment, deployment: Deployment) -> None:
    """What a promotion of `deployment` into `environment` refuses beyond the deployment's own
    state (domain.promotion_kind): the environment already has it, or it is bound elsewhere."""
    require_no_promotion_in_flight(environment)
    if deployment.environment == environment.name:
        if environment.is_production:
            raise FailedPrecondition(
                "ALREADY_PRODUCTION",
                f"deployment {deployment.id} is already the production deployment of model {model.id}",
                deployment_id=deployment.id,
            )
        raise FailedPrecondition(
            "ALREADY_IN_ENVIRONMENT",
            f"deployment {deployment.id} is already the {environment.name} deployment of model {model.id}",
            deployment_id=deployment.id,
            environment=environment.name,
        )
    if deployment.is_production:
        raise FailedPrecondition(
            "PRODUCTION_DEPLOYMENT_NOT_MOVABLE",
            f"deployment {deployment.id} is the production deployment of model {model.id}: production is never "
            f"left without one; promote another deployment into production first, or promote development "
            f"into {environment.name} (a new deployment)",
            deployment_id=deployment.id,
            environment=environment.name,
        )
    if deployment.promoting_environment and deployment.promoting_environment != environment.name:
        raise Aborted(
            "DEPLOYMENT_PROMOTING_ELSEWHERE",
            f"deployment {deployment.id} is being promoted into {deployment.promoting_environment}; "
            "wait for that promotion to finish",
            deployment_id=deployment.id,
            environment=deployment.promoting_environment,
        )


def deployment_environment(deployment: Deployment) -> str:
    """The environment a deployment's model is told it runs in ("" for none), as Truss's
    `environment` keyword: the one it is in, or the one it is being promoted into (it starts
    there, as one pushed into a Truss environment does); development and other published
    deployments are in none."""
    return deployment.promoting_environment or deployment.environment or ""


def plan_promotion(model: Model, environment: Environment, deployment: Deployment) -> PromotionKind:
    """How `deployment` is promoted into `environment`, or why it is refused (a promotion in
    flight into that environment is refused first)."""
    require_not_deleted(deployment)
    check_target(model, environment, deployment)
    return promotion_kind(deployment)
