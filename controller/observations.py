"""What the platform itself records about deployments: the reconciler's observed state,
load and build failures, live-reload outcomes and informative events. Each write checks the
record it was computed from is still current, so a stale observation changes nothing, and
is fenced (`leader_write`: Leadership.fenced_write): only the controller that holds the
leader lease with its token runs replicas, so only its observations are written — a
controller paused past its lease cannot overwrite what its successor recorded."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from controller import domain, promotion
from controller.domain import Deployment, State
from controller.lookups import require_deployment
from controller.store import Store, WriteTx, now

# A write transaction refused (LeaseLost, nothing written) unless this controller leads.
LeaderWrite = Callable[[], contextlib.AbstractAsyncContextManager[WriteTx]]


def _wanted(deployment: Deployment) -> tuple:
    """What an observation was computed against: if any of it changed since, the observation is stale."""
    return (deployment.active, deployment.revision, deployment.delete_time, deployment.failed_revision)


class Observations:
    def __init__(
        self, store: Store, on_commit: Callable[[], None] = lambda: None, leader_write: LeaderWrite | None = None
    ) -> None:
        self.store = store
        self._on_commit = on_commit
        # None: unfenced (a lone controller, or tests without leadership).
        self._write: LeaderWrite = leader_write or store.write

    async def record_reload(self, seen: Deployment, digest: str, reloaded: int, error: str) -> Deployment:
        """The outcome of reloading the patched package `digest` of `seen` on its `reloaded`
        replicas. Once loaded, or with no replica to load it, it becomes the package the
        deployment serves and starts from; if it failed to load, the deployment keeps the
        package that last loaded and says why until a later patch or push."""
        async with self._write() as tx:
            current = await require_deployment(tx, seen.id)
            if current.patched_digest != digest or current.revision != seen.revision:
                return current  # settled already (a retried patch), or replaced by a push or a later patch
            at = now()
            if error:
                if error != current.reload_error:
                    await tx.update_deployment(current.id, reload_error=error)
                    await tx.add_event(
                        at,
                        current.model_id,
                        current.id,
                        "deployment.reload_failed",
                        f"package {digest[:12]} failed to load: {error}; "
                        f"package {current.package_digest[:12]} keeps serving, and a replica that starts loads it",
                    )
            else:
                await tx.update_deployment(
                    current.id, package_digest=digest, patched_digest=None, reload_error="", update_time=at
                )
                outcome = (
                    f"package {digest[:12]} loaded in place on {reloaded} replica(s)"
                    if reloaded
                    else f"no replica runs: the next one starts from package {digest[:12]}"
                )
                await tx.add_event(at, current.model_id, current.id, "deployment.reloaded", outcome)
            updated = await require_deployment(tx, current.id)
        self._on_commit()
        return updated

    async def record_observed(self, seen: Deployment, state: State, message: str, desired: int, ready: int) -> None:
        """Store the reconciler's view of a deployment and finish a promotion waiting on it.

        `seen` is the record the view was computed from; if the desired state has
        changed since, nothing is written and the next reconcile pass recomputes.
        """
        async with self._write() as tx:
            current = await tx.get_deployment(seen.id)
            if current is None or _wanted(current) != _wanted(seen):
                return
            at = now()
            await tx.update_deployment(
                seen.id, state=state, status_message=message, desired_replicas=desired, ready_replicas=ready
            )
            if state is not current.state:
                detail = f": {message}" if message else ""
                await tx.add_event(
                    at,
                    seen.model_id,
                    seen.id,
                    "deployment.state_changed",
                    f"{current.state.value} -> {state.value}{detail}",
                )
            if current.promoting_environment:
                if state in (State.ACTIVE, State.SCALED_TO_ZERO):
                    environment = await tx.get_environment(current.model_id, current.promoting_environment)
                    assert environment is not None, "a deployment is promoted only into a live environment"
                    await promotion.finish_promotion(tx, environment, current, at)
                elif state in domain.FAILED_STATES:
                    await promotion.fail_promotion(tx, current, at, message)
        self._on_commit()

    async def record_load_failure(self, seen: Deployment, error: str) -> None:
        """The model of `seen.revision` failed to load: no replica is started for it again."""
        async with self._write() as tx:
            current = await tx.get_deployment(seen.id)
            if current is None or current.revision != seen.revision:
                return
            await tx.update_deployment(seen.id, failed_revision=seen.revision, status_message=error)
            await tx.add_event(now(), seen.model_id, seen.id, "deployment.load_failed", error)
        self._on_commit()

    async def record_build_failure(self, seen: Deployment, error: str) -> None:
        """The environment of `seen.revision` failed to build: BUILD_FAILED, and no build or
        replica is tried again for this revision until it is activated or pushed again
        (like a load failure, through failed_revision; the state tells the two apart)."""
        async with self._write() as tx:
            current = await tx.get_deployment(seen.id)
            if current is None or _wanted(current) != _wanted(seen):
                return
            at = now()
            await tx.update_deployment(
                seen.id,
                failed_revision=seen.revision,
                state=State.BUILD_FAILED,
                status_message=error,
                desired_replicas=0,
                ready_replicas=0,
            )
            await tx.add_event(at, seen.model_id, seen.id, "deployment.build_failed", error)
            if current.state is not State.BUILD_FAILED:
                await tx.add_event(
                    at,
                    seen.model_id,
                    seen.id,
                    "deployment.state_changed",
                    f"{current.state.value} -> {State.BUILD_FAILED.value}: {error.splitlines()[0] if error else ''}",
                )
            await promotion.fail_promotion(tx, current, at, "its environment failed to build")
        self._on_commit()

    async def record_event(self, model_id: str, deployment_id: str, type_: str, message: str) -> None:
        """An informative entry in the event log (for example a build's progress)."""
        async with self._write() as tx:
            await tx.add_event(now(), model_id, deployment_id, type_, message)
