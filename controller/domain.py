"""Lifecycle rules of DESIGN.md §2 as pure functions over plain records.

Nothing here touches gRPC, SQL or processes: the lifecycle service loads records,
asks these functions what is allowed and what follows, and stores the answer.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field

from controller.errors import Aborted, FailedPrecondition, NotFound

DEVELOPMENT_NAME = "development"
# Matched whole (fullmatch): with match, `$` also matches before a trailing newline.
NAME_PATTERN = re.compile(r"[0-9A-Za-z_.-]{1,63}")


class Kind(enum.StrEnum):
    DEVELOPMENT = "development"
    PUBLISHED = "published"


class State(enum.StrEnum):
    BUILDING = "BUILDING"
    BUILD_FAILED = "BUILD_FAILED"
    DEPLOYING = "DEPLOYING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    LOADING_MODEL = "LOADING_MODEL"
    ACTIVE = "ACTIVE"
    UPDATING = "UPDATING"
    UNHEALTHY = "UNHEALTHY"
    SCALED_TO_ZERO = "SCALED_TO_ZERO"
    WAKING_UP = "WAKING_UP"
    DEACTIVATING = "DEACTIVATING"
    INACTIVE = "INACTIVE"
    FAILED = "FAILED"


class ReplicaPhase(enum.StrEnum):
    STARTING = "STARTING"  # process spawned, not yet listening
    LOADING = "LOADING"  # listening, model load() running
    READY = "READY"  # health SERVING
    DRAINING = "DRAINING"  # told to stop, finishing in-flight work


class PushTarget(enum.StrEnum):
    DEVELOPMENT = "development"
    PUBLISHED = "published"
    PRODUCTION = "production"


@dataclass(frozen=True)
class AutoscalingSettings:
    min_replica: int = 0
    max_replica: int = 1
    autoscaling_window: int = 60
    scale_down_delay: int = 900
    concurrency_target: int = 1
    target_utilization_percentage: int = 70


AUTOSCALING_FIELDS = tuple(f.name for f in dataclasses.fields(AutoscalingSettings))
DEVELOPMENT_AUTOSCALING = AutoscalingSettings(min_replica=0, max_replica=1)


@dataclass(frozen=True)
class AutoscalingLimits:
    """Allowed ranges (inclusive) for each setting: operator configuration."""

    min_replica: tuple[int, int] = (0, 64)
    max_replica: tuple[int, int] = (1, 64)
    autoscaling_window: tuple[int, int] = (10, 3600)
    scale_down_delay: tuple[int, int] = (0, 3600)
    concurrency_target: tuple[int, int] = (1, 10_000)
    target_utilization_percentage: tuple[int, int] = (1, 100)
    defaults: AutoscalingSettings = field(default_factory=AutoscalingSettings)


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    # Production's deployment and the one being promoted into production (its environment's record).
    production_deployment_id: str | None
    development_deployment_id: str | None
    promoting_deployment_id: str | None
    next_deployment_number: int
    create_time: float
    update_time: float
    delete_time: float | None = None
    deployment_count: int = 0


@dataclass(frozen=True)
class Deployment:
    id: str
    model_id: str
    name: str
    kind: Kind
    active: bool
    autoscaling: AutoscalingSettings
    package_digest: str
    revision: int
    create_time: float
    update_time: float
    state: State = State.DEPLOYING
    status_message: str = ""
    desired_replicas: int = 0
    ready_replicas: int = 0
    source_deployment_id: str | None = None
    # The revision whose model failed to load; no replica is started for it again.
    failed_revision: int | None = None
    delete_time: float | None = None
    is_production: bool = False
    # The environment the deployment takes the traffic of (controller/environments.py), and the
    # one it is being promoted into; None for neither.
    environment: str | None = None
    promoting_environment: str | None = None
    # Live reload: the package of the latest patch while it is not package_digest (its reload
    # is under way, or failed with reload_error). package_digest stays the package that last
    # loaded, which is what a replica starts from; the patched package is the next patch's base.
    patched_digest: str | None = None
    reload_error: str = ""

    @property
    def is_development(self) -> bool:
        return self.kind is Kind.DEVELOPMENT

    @property
    def deleted(self) -> bool:
        return self.delete_time is not None

    @property
    def load_failed(self) -> bool:
        return self.failed_revision == self.revision

    @property
    def patch_base_digest(self) -> str:
        """The package the next live-reload patch must be computed against: the user's latest."""
        return self.patched_digest or self.package_digest


def new_deployment(
    deployment_id: str,
    model_id: str,
    name: str,
    kind: Kind,
    autoscaling: AutoscalingSettings,
    package_digest: str,
    at: float,
    source_deployment_id: str | None = None,
) -> Deployment:
    """A deployment as created: active, at revision 1, not yet started."""
    return Deployment(
        id=deployment_id,
        model_id=model_id,
        name=name,
        kind=kind,
        active=True,
        autoscaling=autoscaling,
        package_digest=package_digest,
        revision=1,
        create_time=at,
        update_time=at,
        source_deployment_id=source_deployment_id,
    )


# --- rules that refuse operations -------------------------------------------------


def require_not_deleted(deployment: Deployment) -> None:
    if deployment.deleted:
        raise NotFound("DEPLOYMENT_DELETED", f"deployment {deployment.id} was deleted", deployment_id=deployment.id)


def check_delete(deployment: Deployment) -> None:
    require_not_deleted(deployment)
    if deployment.is_production:
        raise FailedPrecondition(
            "PRODUCTION_NOT_DELETABLE",
            f"deployment {deployment.id} is the production deployment of model {deployment.model_id}: "
            "promote another deployment first, or delete the model",
            deployment_id=deployment.id,
        )
    if deployment.environment:
        raise FailedPrecondition(
            "DEPLOYMENT_IN_ENVIRONMENT",
            f"deployment {deployment.id} is the {deployment.environment} deployment of model {deployment.model_id}: "
            f"promote another deployment into {deployment.environment} first, or delete the environment",
            deployment_id=deployment.id,
            environment=deployment.environment,
        )


def check_rename(deployment: Deployment) -> None:
    require_not_deleted(deployment)
    if deployment.is_development:
        raise FailedPrecondition(
            "DEVELOPMENT_NOT_RENAMABLE",
            f"deployment {deployment.id} is the development deployment, which is always named {DEVELOPMENT_NAME!r}",
            deployment_id=deployment.id,
        )


def check_autoscaling_change(deployment: Deployment) -> None:
    require_not_deleted(deployment)
    if deployment.is_development:
        raise FailedPrecondition(
            "DEVELOPMENT_AUTOSCALING_FIXED",
            f"deployment {deployment.id} is the development deployment: its autoscaling is fixed "
            "at min_replica 0, max_replica 1",
            deployment_id=deployment.id,
        )


def check_activate(deployment: Deployment) -> None:
    require_not_deleted(deployment)


def check_deactivate(deployment: Deployment) -> None:
    require_not_deleted(deployment)


def check_wake(deployment: Deployment) -> None:
    require_not_deleted(deployment)
    if not deployment.active:
        raise FailedPrecondition(
            "DEPLOYMENT_INACTIVE",
            f"deployment {deployment.id} is inactive: activate it instead of waking it",
            deployment_id=deployment.id,
        )
    require_not_failed(deployment, "and cannot be woken: push a fixed package, or activate the deployment to try again")


def require_not_failed(deployment: Deployment, consequence: str) -> None:
    """A deployment whose current revision failed to build or load starts nothing until it changes."""
    if deployment.load_failed or deployment.state in FAILED_STATES:
        raise FailedPrecondition(
            "DEPLOYMENT_FAILED",
            f"deployment {deployment.id} failed to start ({deployment.status_message or deployment.state.value}) "
            f"{consequence}",
            deployment_id=deployment.id,
        )


# States in which a deployment's current revision cannot serve until it is pushed (or activated) again.
FAILED_STATES = frozenset({State.DEPLOY_FAILED, State.BUILD_FAILED, State.FAILED})


class PromotionKind(enum.StrEnum):
    # Development: a new published deployment is created, started, and switched in when ready.
    FROM_DEVELOPMENT = "from_development"
    # A published deployment that is serving (or scaled to zero): switch now.
    IMMEDIATE = "immediate"
    # A published deployment that is still starting: switch once it is ready.
    WHEN_READY = "when_ready"


def promotion_kind(deployment: Deployment) -> PromotionKind:
    """How a deployment is promoted, by its own state (what the target environment refuses is
    controller/environments.py's plan_promotion)."""
    require_not_deleted(deployment)
    if not deployment.active:
        raise FailedPrecondition(
            "DEPLOYMENT_INACTIVE",
            f"deployment {deployment.id} is inactive: activate it and wait for it to start before promoting it",
            deployment_id=deployment.id,
        )
    require_not_failed(deployment, "and cannot be promoted until it starts")
    if deployment.is_development:
        if deployment.reload_error:
            raise FailedPrecondition(
                "LIVE_RELOAD_FAILED",
                f"the latest live reload of development deployment {deployment.id} failed "
                f"({deployment.reload_error}): it serves older code than its latest patch; patch the fix "
                "(or push) before promoting",
                deployment_id=deployment.id,
            )
        return PromotionKind.FROM_DEVELOPMENT
    if deployment.state in (State.ACTIVE, State.SCALED_TO_ZERO, State.UPDATING):
        return PromotionKind.IMMEDIATE
    return PromotionKind.WHEN_READY


# --- desired and observed state ---------------------------------------------------


def should_run(deployment: Deployment) -> bool:
    return not (deployment.deleted or not deployment.active or deployment.load_failed)


# A deployment in one of these states has not served at its current revision yet: it is
# never scaled below one replica (or it would never load, and a promotion waiting for it
# could complete without it).
COMING_UP_STATES = frozenset({State.BUILDING, State.DEPLOYING, State.LOADING_MODEL, State.WAKING_UP, State.UPDATING})
# Settled states whose recorded desired_replicas is the autoscaler's last target.
SCALED_STATES = frozenset({State.ACTIVE, State.UPDATING, State.UNHEALTHY, State.SCALED_TO_ZERO})


def recorded_target(deployment: Deployment) -> int | None:
    """The replica target last recorded for a running deployment (None when unsettled)."""
    return deployment.desired_replicas if deployment.state in SCALED_STATES else None


def desired_replicas(deployment: Deployment, autoscaler_target: int) -> int:
    """Replicas that should run: the autoscaler's target within [min, max], or 0 when stopped."""
    if not should_run(deployment):
        return 0
    settings = deployment.autoscaling
    return min(max(autoscaler_target, settings.min_replica), settings.max_replica)


@dataclass(frozen=True)
class ReplicaView:
    """What the state computation needs to know about one running replica."""

    phase: ReplicaPhase
    revision: int
    restarts: int = 0


def compute_state(
    deployment: Deployment,
    replicas: list[ReplicaView],
    desired: int,
    load_error: str = "",
    unhealthy_message: str = "",
    waking: bool = False,
    updating: bool = False,
    building: str = "",
    build_failed: bool = False,
) -> tuple[State, str]:
    """Observed state of a deployment from its desired state and its replicas.

    `waking`: the deployment was scaled to zero and is coming back.
    `updating`: the deployment was serving when its revision was bumped.
    `building`: what is being built while the deployment's environment is not ready
    (no replica of its revision can start before it is).
    `build_failed`: the failed revision failed to build (not to load); the message is
    the installer's output, passed as `load_error`.

    A failed live reload is told in every state's message (but a failed revision's, which
    says more) until a later patch or push replaces the package.
    """
    state, message = _replica_state(
        deployment, replicas, desired, load_error, unhealthy_message, waking, updating, building, build_failed
    )
    note = reload_failure_note(deployment)
    if note and state not in FAILED_STATES:
        message = f"{message}; {note}" if message else note
    return state, message


def reload_failure_note(deployment: Deployment) -> str:
    if not deployment.reload_error:
        return ""
    return (
        f"the latest live reload (package {(deployment.patched_digest or '')[:12]}) failed: {deployment.reload_error}; "
        f"the deployment keeps package {deployment.package_digest[:12]}, the last that loaded"
    )


def _replica_state(
    deployment: Deployment,
    replicas: list[ReplicaView],
    desired: int,
    load_error: str,
    unhealthy_message: str,
    waking: bool,
    updating: bool,
    building: str,
    build_failed: bool,
) -> tuple[State, str]:
    live = [r for r in replicas if r.phase is not ReplicaPhase.DRAINING]
    if not deployment.active or deployment.deleted:
        if replicas:
            return State.DEACTIVATING, "stopping replicas"
        return State.INACTIVE, ""
    if deployment.load_failed:
        if build_failed:
            return State.BUILD_FAILED, load_error or "the environment failed to build"
        return State.DEPLOY_FAILED, load_error or "the model failed to load"
    if building:
        return State.BUILDING, building
    current = [r for r in live if r.revision == deployment.revision]
    ready_current = any(r.phase is ReplicaPhase.READY for r in current)
    ready_old = any(r.phase is ReplicaPhase.READY and r.revision != deployment.revision for r in live)
    if desired == 0:
        return State.SCALED_TO_ZERO, ""
    if ready_old:
        return State.UPDATING, "replacing replicas with the new revision"
    if ready_current:
        return State.ACTIVE, ""
    if unhealthy_message:
        return State.UNHEALTHY, unhealthy_message
    loading = any(r.phase is ReplicaPhase.LOADING for r in current)
    if updating:
        return State.UPDATING, f"{'loading the model of' if loading else 'starting'} revision {deployment.revision}"
    if loading:
        return State.LOADING_MODEL, "loading the model"
    if waking:
        return State.WAKING_UP, "starting a replica"
    return State.DEPLOYING, "starting replicas"


# --- live reload (development only) -----------------------------------------------

# config.yaml keys the loaded model depends on: changing one needs a fresh process.
RESTART_CONFIG_KEYS = (
    "requirements",
    "requirements_file",
    "environment_variables",
    "secrets",
    "model_class_name",
    "model_class_filename",
    "model_module_dir",
    "external_package_dirs",
    "bundled_packages_dir",
    "runtime",
)


class PatchApply(enum.StrEnum):
    IN_PLACE = "in_place"  # the running replicas reload the model code
    RESTART = "restart"  # a new revision: the replicas restart with the new package


def check_patch(deployment: Deployment) -> None:
    """Live reload patches only the development deployment."""
    require_not_deleted(deployment)
    if not deployment.is_development:
        raise FailedPrecondition(
            "LIVE_RELOAD_DEVELOPMENT_ONLY",
            f"deployment {deployment.id} is {'the production' if deployment.is_production else 'a published'} "
            "deployment: only the development deployment can be live-reloaded",
            deployment_id=deployment.id,
        )


def check_patch_base(deployment: Deployment, base_package_digest: str) -> None:
    """Check-and-set: a patch applies only to the package it was computed against, the
    latest patched one (even if its live reload failed: the user's sources build on it)."""
    latest = deployment.patch_base_digest
    if base_package_digest != latest:
        raise Aborted(
            "STALE_PACKAGE_BASE",
            f"the patch was computed against package {base_package_digest[:12] or '(none)'}, but the latest "
            f"package of deployment {deployment.id} is {latest[:12]}: resync and patch again",
            deployment_id=deployment.id,
            package_digest=latest,
        )


def plan_patch(
    deployment: Deployment,
    old_config: dict,
    new_config: dict,
    old_requirements: list[str],
    new_requirements: list[str],
) -> PatchApply:
    """In place, unless the patch changes what the loaded model depends on (config keys, or
    the requirements themselves, say in a requirements file: a new environment is built),
    or the current revision failed to load (then no replica runs to reload)."""
    if old_config.get("model_name") != new_config.get("model_name"):
        raise FailedPrecondition(
            "MODEL_NAME_CHANGED",
            f"the patch changes model_name from {old_config.get('model_name')!r} to "
            f"{new_config.get('model_name')!r}: push the package to deploy it as that model",
            deployment_id=deployment.id,
        )
    if deployment.load_failed:
        return PatchApply.RESTART
    if any(old_config.get(key) != new_config.get(key) for key in RESTART_CONFIG_KEYS):
        return PatchApply.RESTART
    if old_requirements != new_requirements:
        return PatchApply.RESTART
    return PatchApply.IN_PLACE
