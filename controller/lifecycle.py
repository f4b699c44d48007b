"""Lifecycle operations: load records, apply the domain rules, store desired state.

Each mutation is one store transaction. A handler writes desired state and returns;
the reconcile loop (controller/reconciler.py) owns observed state and is woken after
each commit. An optional request_id makes a mutation idempotent: the first result
is stored in the same transaction and returned to any retry.
"""

from __future__ import annotations

import asyncio
import functools
import pathlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from controller import compat, domain, environments, promotion, usage, validation
from controller.domain import (
    DEVELOPMENT_AUTOSCALING,
    DEVELOPMENT_NAME,
    AutoscalingLimits,
    Deployment,
    Kind,
    Model,
    PushTarget,
    State,
)
from controller.errors import InvalidArgument
from controller.lookups import find_model, require_deployment, require_model
from controller.observations import LeaderWrite, Observations
from controller.packages import FilePatch, PackageStore
from controller.request_results import Result, decode_result, encode_result, fingerprint
from controller.store import Page, Store, WriteTx, new_id, now
from replica.package import CONFIG_FILENAME, load_package_config, read_requirements, validate_package

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("INVALID_PAGE_SIZE", f"page_size must not be negative (got {requested})")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _check_pushed_package(
    package_dir: pathlib.Path, model_name: str, machine: compat.Machine
) -> tuple[str, tuple[str, ...]]:
    """What a push refuses in the package itself (layout, model name, config keys this
    platform cannot honour); returns the model name (`model_name`, the push's, else
    config.yaml's) and the config warnings."""
    config = validate_package(package_dir)
    model_name = model_name or config.model_name or ""
    validation.validate_model_name(model_name)
    return model_name, tuple(compat.check_package(config, machine))


def _new_revision(current: Deployment) -> dict:
    """Fields that start the next revision of a deployment updated in place."""
    values: dict = {
        "revision": current.revision + 1,
        "failed_revision": None,
        "patched_digest": None,
        "reload_error": "",
    }
    if current.load_failed:  # the failure was the old revision's: don't show it as the new one's
        values.update(state=State.DEPLOYING, status_message="")
    elif current.state in (State.ACTIVE, State.UPDATING):  # not "ACTIVE" before the new revision is
        values.update(state=State.UPDATING, status_message=f"starting revision {current.revision + 1}")
    return values


class Lifecycle:
    def __init__(
        self,
        store: Store,
        packages: PackageStore,
        limits: AutoscalingLimits,
        on_commit: Callable[[], None] = lambda: None,
        on_wake: Callable[[str], None] = lambda deployment_id: None,
        machine: Callable[[], compat.Machine] = compat.Machine,
        leader_write: LeaderWrite | None = None,
    ) -> None:
        self.store = store
        self.packages = packages
        self.limits = limits
        self._on_commit = on_commit
        self._on_wake = on_wake
        # What replicas are offered now (the secrets set so far among it), for push warnings.
        self._machine = machine
        # The platform's own records of its deployments (the reconciler's, builds', reloads').
        # Fenced by the leader lease (`leader_write`, Leadership.fenced_write) when several
        # controllers may run: only the leader's records count.
        self.observed = Observations(store, on_commit, leader_write)

    async def _mutate(
        self, method: str, request_id: str, body: Callable[[WriteTx, float], Awaitable[Result]], *request: object
    ) -> Result:
        """Run `body` in one write transaction. With a request_id, a retry of the same
        request (`method` and the arguments in `request`) returns the first result, and
        the same request_id with another request is refused."""
        request_fingerprint = fingerprint(method, request) if request_id else ""
        async with self.store.write() as tx:
            if request_id:
                prior = await tx.claim_request(request_id, method, request_fingerprint, now())
                if prior is not None:
                    prior_method, prior_fingerprint, encoded = prior
                    if prior_method != method:
                        raise InvalidArgument(
                            "REQUEST_ID_REUSED",
                            f"request_id {request_id!r} was already used for {prior_method}, not {method}",
                        )
                    if prior_fingerprint and prior_fingerprint != request_fingerprint:
                        raise InvalidArgument(
                            "REQUEST_ID_REUSED",
                            f"request_id {request_id!r} was already used for a different {method} request",
                        )
                    return decode_result(encoded)
            result = await body(tx, now())
            if request_id:
                await tx.save_request(request_id, encode_result(result))
        self._on_commit()
        return result

    # --- reads ------------------------------------------------------------------

    async def get_model(self, model_id: str) -> Model:
        return await require_model(self.store, model_id)

    async def list_models(self, size: int, token: str) -> Page:
        return await self.store.list_models(page_size(size), token)

    async def get_deployment(self, deployment_id: str) -> Deployment:
        deployment = await require_deployment(self.store, deployment_id)
        domain.require_not_deleted(deployment)
        return deployment

    async def find_deployment(self, deployment_id: str) -> Deployment:
        """A deployment, deleted ones included (their usage and history remain)."""
        return await require_deployment(self.store, deployment_id)

    async def list_deployments(self, model_id: str, show_deleted: bool, size: int, token: str) -> Page:
        if model_id:
            # With show_deleted, a deleted model's deployments too (by its ID).
            model = await (find_model(self.store, model_id) if show_deleted else require_model(self.store, model_id))
            model_id = model.id
        return await self.store.list_deployments(model_id, show_deleted, page_size(size), token)

    async def watch_initial(self, model_id: str, deployment_id: str) -> tuple[str, list[Deployment]]:
        """The resolved model ID filter and the deployments a new watcher starts from."""
        if deployment_id:
            return "", [await self.get_deployment(deployment_id)]
        if model_id:
            model_id = (await require_model(self.store, model_id)).id
        return model_id, await self._live_deployments(model_id)

    async def watch_relist(self, model_id: str, deployment_id: str) -> set[str]:
        """The deployments a watch looks at again after a reset (`model_id` as watch_initial
        resolved it); refuses nothing (a deleted one is shown deleted)."""
        if deployment_id:
            return {deployment_id}
        return {deployment.id for deployment in await self._live_deployments(model_id)}

    async def _live_deployments(self, model_id: str) -> list[Deployment]:
        deployments, token = [], ""
        while True:
            page = await self.store.list_deployments(model_id, False, MAX_PAGE_SIZE, token)
            deployments.extend(page.items)
            token = page.next_page_token
            if not token:
                return deployments

    async def list_usage(
        self, model_id: str, size: int, token: str, days: int = 0
    ) -> tuple[Page, dict[str, list[tuple[str, float, int]]]]:
        """A page of usage records, and (with `days`) each one's usage by UTC day."""
        usage.check_days(days)
        if model_id:
            model_id = (await find_model(self.store, model_id)).id
        at = now()
        page = await self.store.list_usage(model_id, page_size(size), token, at)
        if not days:
            return page, {}
        since = usage.first_day(days, at)
        intervals = await self.store.replica_intervals([row.deployment_id for row in page.items], since)
        return page, {d: usage.by_day(spans, since, at) for d, spans in intervals.items()}

    async def list_events(
        self,
        model_id: str,
        deployment_id: str,
        size: int,
        token: str,
        newest_first: bool = False,
        environment: str = "",
    ) -> Page:
        if model_id:
            model_id = (await find_model(self.store, model_id)).id
        if deployment_id:
            await require_deployment(self.store, deployment_id)
        if environment:
            environments.validate_name(environment)
        return await self.store.list_events(model_id, deployment_id, page_size(size), token, newest_first, environment)

    # --- push -------------------------------------------------------------------

    async def push(
        self,
        archive: bytes,
        sha256: str,
        target: PushTarget,
        deployment_name: str,
        request_id: str,
        model_name: str = "",
        metadata: Mapping[str, Any] | None = None,
        environment: str = "",
    ) -> Result:
        """`model_name`, when given, is the model pushed to whatever config.yaml says (as
        `truss push --model-name`); without it config.yaml must name the model. `metadata`
        (`truss push --metadata`) is recorded in the deployment's event log. `environment`: the
        one a PRODUCTION push promotes into (production when empty)."""
        if not archive:
            raise InvalidArgument("MALFORMED_PACKAGE", "package_archive is empty")
        if environment and target is not PushTarget.PRODUCTION:
            raise InvalidArgument(
                "ENVIRONMENT_NEEDS_PROMOTE",
                f"environment {environment[:64]!r} is where a promoting push goes: push with --promote "
                "(target PUSH_TARGET_PRODUCTION) to promote into it",
            )
        environment = environment or environments.PRODUCTION
        environments.validate_name(environment)
        if target is PushTarget.DEVELOPMENT and deployment_name:
            raise InvalidArgument(
                "DEVELOPMENT_NOT_RENAMABLE",
                f"the development deployment is always named {DEVELOPMENT_NAME!r}; "
                "--deployment-name needs --publish or --promote",
            )
        if deployment_name:
            validation.validate_deployment_name(deployment_name)
        if model_name:
            validation.validate_model_name(model_name)
        metadata_json = validation.encode_metadata(metadata) if metadata else ""
        check = functools.partial(_check_pushed_package, model_name=model_name, machine=self._machine())
        staged = await asyncio.to_thread(self.packages.stage, archive, sha256, check)
        digest = staged.digest
        model_name, warnings = staged.checked

        async def body(tx: WriteTx, at: float) -> Result:
            model = await tx.get_live_model_by_name(model_name)  # the model's lock first, then the package's
            await tx.record_package(digest, len(archive), at)
            created = model is None
            if model is None:
                model = await tx.insert_model(model_name, at)
                await tx.add_event(at, model.id, "", "model.created", f"model {model_name!r} created")
            if target is PushTarget.DEVELOPMENT:
                deployment = await self._push_development(tx, model, digest, at)
            else:
                into = None
                if target is PushTarget.PRODUCTION:
                    into = await promotion.require_environment(tx, model, environment)
                    environments.require_no_promotion_in_flight(into)
                deployment = await promotion.create_published(
                    tx, model, digest, deployment_name, at, self.limits, into=into
                )
            for warning in warnings:
                await tx.add_event(at, model.id, deployment.id, "deployment.config_warning", warning)
            if metadata_json:
                await tx.add_event(at, model.id, deployment.id, "deployment.metadata", metadata_json)
            self.packages.commit(staged)  # the push is accepted: before the deployment is visible
            return Result(model=await tx.get_model(model.id), deployment=deployment, flag=created, warnings=warnings)

        try:
            return await self._mutate(
                "CreateDeployment",
                request_id,
                body,
                digest,
                target,
                deployment_name,
                model_name,
                metadata_json,
                *([environment] if environment != environments.PRODUCTION else []),
            )
        finally:
            await asyncio.to_thread(self.packages.discard, staged)

    async def _push_development(self, tx: WriteTx, model: Model, digest: str, at: float) -> Deployment:
        if model.development_deployment_id:
            current = await require_deployment(tx, model.development_deployment_id)
            await tx.update_deployment(
                current.id, package_digest=digest, active=True, update_time=at, **_new_revision(current)
            )
            await tx.add_event(
                at,
                model.id,
                current.id,
                "deployment.updated",
                f"development updated in place to revision {current.revision + 1} (package {digest[:12]})",
            )
            return await require_deployment(tx, current.id)
        deployment = domain.new_deployment(
            new_id("d"), model.id, DEVELOPMENT_NAME, Kind.DEVELOPMENT, DEVELOPMENT_AUTOSCALING, digest, at
        )
        await tx.insert_deployment(deployment)
        await tx.update_model(model.id, at, development_deployment_id=deployment.id)
        await tx.add_event(at, model.id, deployment.id, "deployment.created", "development deployment created")
        return await require_deployment(tx, deployment.id)

    async def patch_development(
        self, deployment_id: str, base_digest: str, patches: Sequence[FilePatch], request_id: str
    ) -> Result:
        """Live reload: make `base_digest` + `patches` the development deployment's latest package.

        Check-and-set on the base. The revision is bumped (flag) only when the patch
        changes what the loaded model depends on; otherwise the patched package is
        recorded as patched_digest, the caller reloads the running replicas in place and
        records the outcome (Observations.record_reload).
        """
        seen = await self.get_deployment(deployment_id)
        domain.check_patch(seen)
        derived = None
        warnings: tuple[str, ...] = ()
        if seen.patch_base_digest == base_digest:  # otherwise refused below (or answered from request_id)
            derived = await asyncio.to_thread(self.packages.derive, base_digest, patches)
            if any(patch.path == CONFIG_FILENAME for patch in patches):  # else checked when it last changed
                warnings = tuple(await asyncio.to_thread(compat.check_package, derived[1], self._machine()))
            base_config = await asyncio.to_thread(load_package_config, self.packages.directory(base_digest))
            try:
                requirements = (read_requirements(base_config), read_requirements(derived[1]))
            except ValueError as error:
                raise InvalidArgument("MALFORMED_PACKAGE", f"malformed package: {error}") from error

        async def body(tx: WriteTx, at: float) -> Result:
            current = await require_deployment(tx, deployment_id)
            domain.check_patch(current)
            domain.check_patch_base(current if derived else seen, base_digest)
            assert derived is not None, "check_patch_base refuses a patch on any other base"
            digest, config, size = derived
            plan = domain.plan_patch(current, base_config.raw_dict(), config.raw_dict(), *requirements)
            restart = plan is domain.PatchApply.RESTART
            if restart:
                values: dict = {"package_digest": digest, **_new_revision(current)}
            else:  # package_digest stays the package that last loaded until this one has
                patched = digest if digest != current.package_digest else None
                values = {"patched_digest": patched, "reload_error": ""}
            await tx.record_package(digest, size, at)
            await tx.update_deployment(current.id, update_time=at, **values)
            how = f"restarting at revision {current.revision + 1}" if restart else "reloading in place"
            await tx.add_event(
                at,
                current.model_id,
                current.id,
                "deployment.patched",
                f"live reload of {len(patches)} file(s) to package {digest[:12]}, {how}",
            )
            for warning in warnings:
                await tx.add_event(at, current.model_id, current.id, "deployment.config_warning", warning)
            return Result(deployment=await require_deployment(tx, current.id), flag=restart, warnings=warnings)

        return await self._mutate("PatchDeployment", request_id, body, deployment_id, base_digest, patches)

    # --- deployment verbs -------------------------------------------------------

    async def promote(self, deployment_id: str, request_id: str, environment: str = "") -> Result:
        """Into `environment` (production when empty): controller/promotion.py. `flag`: it switched."""
        name = environment or environments.PRODUCTION
        environments.validate_name(name)

        async def body(tx: WriteTx, at: float) -> Result:
            deployment = await require_deployment(tx, deployment_id)
            domain.require_not_deleted(deployment)
            model = await require_model(tx, deployment.model_id)
            into = await promotion.require_environment(tx, model, name)
            promoted, switched = await promotion.promote(tx, model, into, deployment, at, self.limits)
            return Result(deployment=promoted, flag=switched)

        extra = [name] if name != environments.PRODUCTION else []  # a retry from before environments matches
        return await self._mutate("PromoteDeployment", request_id, body, deployment_id, *extra)

    async def activate(self, deployment_id: str, request_id: str) -> Result:
        async def body(tx: WriteTx, at: float) -> Result:
            deployment = await require_deployment(tx, deployment_id)
            domain.check_activate(deployment)
            if not deployment.active or deployment.load_failed:
                await tx.update_deployment(deployment.id, active=True, failed_revision=None, update_time=at)
                await tx.add_event(at, deployment.model_id, deployment.id, "deployment.activated", "activated")
            return Result(deployment=await require_deployment(tx, deployment.id))

        return await self._mutate("ActivateDeployment", request_id, body, deployment_id)

    async def deactivate(self, deployment_id: str, request_id: str) -> Result:
        async def body(tx: WriteTx, at: float) -> Result:
            deployment = await require_deployment(tx, deployment_id)
            domain.check_deactivate(deployment)
            if deployment.active:
                await tx.update_deployment(deployment.id, active=False, update_time=at)
                await promotion.cancel_promotion_of(tx, deployment, at, "the deployment was deactivated")
                await tx.add_event(at, deployment.model_id, deployment.id, "deployment.deactivated", "deactivated")
            return Result(deployment=await require_deployment(tx, deployment.id))

        return await self._mutate("DeactivateDeployment", request_id, body, deployment_id)

    async def wake(self, deployment_id: str, request_id: str) -> Result:
        async def body(tx: WriteTx, at: float) -> Result:
            deployment = await require_deployment(tx, deployment_id)
            domain.check_wake(deployment)
            if deployment.state is State.SCALED_TO_ZERO:
                await tx.add_event(
                    at, deployment.model_id, deployment.id, "deployment.wake_requested", "wake requested"
                )
            return Result(deployment=deployment)

        result = await self._mutate("WakeDeployment", request_id, body, deployment_id)
        self._on_wake(deployment_id)
        return result

    async def delete_deployment(self, deployment_id: str, request_id: str) -> Result:
        async def body(tx: WriteTx, at: float) -> Result:
            deployment = await require_deployment(tx, deployment_id)
            domain.check_delete(deployment)
            await tx.update_deployment(deployment.id, delete_time=at, update_time=at)
            await promotion.cancel_promotion_of(tx, deployment, at, "the deployment was deleted")
            if deployment.is_development:
                await tx.update_model(deployment.model_id, at, development_deployment_id=None)
            await tx.add_event(
                at, deployment.model_id, deployment.id, "deployment.deleted", f"{deployment.name!r} deleted"
            )
            return Result(deployment=await require_deployment(tx, deployment.id))

        return await self._mutate("DeleteDeployment", request_id, body, deployment_id)

    async def update_deployment(
        self,
        deployment_id: str,
        name: str | None,
        autoscaling_changes: dict[str, int],
        request_id: str,
    ) -> Result:
        async def body(tx: WriteTx, at: float) -> Result:
            deployment = await require_deployment(tx, deployment_id)
            domain.require_not_deleted(deployment)
            values: dict = {}
            # Values equal to the current ones change nothing and are accepted (a read-modify-write
            # of the development deployment sends its name and fixed settings back).
            if name is not None and name != deployment.name:
                domain.check_rename(deployment)
                validation.validate_deployment_name(name)
                taken = await tx.deployment_names(deployment.model_id, name)
                validation.require_unique_name(name, taken, deployment.model_id)
                values["name"] = name
            settings = replace(deployment.autoscaling, **autoscaling_changes)
            if settings != deployment.autoscaling:
                domain.check_autoscaling_change(deployment)
                validation.validate_autoscaling(settings, self.limits)
                values["autoscaling"] = settings
            if values:
                await tx.update_deployment(deployment.id, update_time=at, **values)
                if "autoscaling" in values and deployment.environment:  # an environment's settings are its deployment's
                    await tx.update_environment(deployment.model_id, deployment.environment, at, autoscaling=settings)
                changes = ", ".join(sorted(values))
                await tx.add_event(at, deployment.model_id, deployment.id, "deployment.updated", f"updated {changes}")
            return Result(deployment=await require_deployment(tx, deployment.id))

        return await self._mutate("UpdateDeployment", request_id, body, deployment_id, name, autoscaling_changes)

    async def delete_model(self, model_id: str, request_id: str) -> Result:
        async def body(tx: WriteTx, at: float) -> Result:
            model = await require_model(tx, model_id)
            for environment in await tx.model_environments(model.id):
                if environment.promoting_deployment_id:
                    await tx.update_environment(model.id, environment.name, at, promoting_deployment_id=None)
            for deployment in await tx.model_deployments(model.id):
                await tx.update_deployment(deployment.id, delete_time=at, update_time=at)
            await tx.update_model(model.id, at, delete_time=at)
            await tx.add_event(
                at, model.id, "", "model.deleted", f"model {model.name!r} and all its deployments deleted"
            )
            return Result(model=await tx.get_model(model.id))

        return await self._mutate("DeleteModel", request_id, body, model_id)
