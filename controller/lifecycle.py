"""Lifecycle operations: load records, apply the domain rules, store desired state.

Each mutation is one store transaction. A handler writes desired state and returns;
the reconcile loop (controller/reconciler.py) owns observed state and is woken after
each commit. An optional request_id makes a mutation idempotent: the first result
is stored in the same transaction and returned to any retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import pathlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from controller import compat, domain, usage, validation
from controller.domain import (
    DEVELOPMENT_AUTOSCALING,
    DEVELOPMENT_NAME,
    AutoscalingLimits,
    AutoscalingSettings,
    Deployment,
    Kind,
    Model,
    PromotionKind,
    PushTarget,
    State,
)
from controller.errors import InvalidArgument
from controller.lookups import find_model, require_deployment, require_model
from controller.observations import Observations, switch_production
from controller.packages import FilePatch, PackageStore
from controller.store import Page, Store, WriteTx, new_id, now
from replica.package import CONFIG_FILENAME, load_package_config, read_requirements, validate_package

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class Result:
    """What a mutation returns (and what a retried call with the same request_id gets)."""

    model: Model | None = None
    deployment: Deployment | None = None
    # CreateDeployment: the push created the model. PromoteDeployment: production switched.
    # PatchDeployment: the patch bumped the revision (the replicas restart).
    flag: bool = False
    # CreateDeployment: config.yaml keys that are not honoured (see controller/compat.py).
    warnings: tuple[str, ...] = ()


def _fingerprint(method: str, request: tuple) -> str:
    """What identifies a request, for telling a retry from a reuse of its request_id
    (file contents by their hash: a patch may carry megabytes)."""

    def canonical(part: object) -> object:
        if isinstance(part, dict):
            return sorted(part.items())
        if isinstance(part, FilePatch):
            return part.path, hashlib.sha256(part.content).hexdigest(), part.delete
        if isinstance(part, (list, tuple)):
            return [canonical(item) for item in part]
        return part

    return hashlib.sha256(repr((method, canonical(request))).encode()).hexdigest()


def _encode_result(result: Result) -> str:
    return json.dumps(dataclasses.asdict(result), default=lambda v: v.value)


def _decode_result(text: str) -> Result:
    data = json.loads(text)
    model = Model(**data["model"]) if data["model"] else None
    deployment = None
    if data["deployment"]:
        d = data["deployment"]
        deployment = Deployment(
            **{
                **d,
                "kind": Kind(d["kind"]),
                "state": State(d["state"]),
                "autoscaling": AutoscalingSettings(**d["autoscaling"]),
            }
        )
    return Result(model=model, deployment=deployment, flag=data["flag"], warnings=tuple(data.get("warnings") or ()))


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
    ) -> None:
        self.store = store
        self.packages = packages
        self.limits = limits
        self._on_commit = on_commit
        self._on_wake = on_wake
        # What replicas are offered now (the secrets set so far among it), for push warnings.
        self._machine = machine
        # The platform's own records of its deployments (the reconciler's, builds', reloads').
        self.observed = Observations(store, on_commit)

    async def _mutate(
        self, method: str, request_id: str, body: Callable[[WriteTx, float], Awaitable[Result]], *request: object
    ) -> Result:
        """Run `body` in one write transaction. With a request_id, a retry of the same
        request (`method` and the arguments in `request`) returns the first result, and
        the same request_id with another request is refused."""
        fingerprint = _fingerprint(method, request) if request_id else ""
        async with self.store.write() as tx:
            if request_id:
                prior = await tx.get_request(request_id)
                if prior is not None:
                    prior_method, prior_fingerprint, encoded = prior
                    if prior_method != method:
                        raise InvalidArgument(
                            "REQUEST_ID_REUSED",
                            f"request_id {request_id!r} was already used for {prior_method}, not {method}",
                        )
                    if prior_fingerprint and prior_fingerprint != fingerprint:
                        raise InvalidArgument(
                            "REQUEST_ID_REUSED",
                            f"request_id {request_id!r} was already used for a different {method} request",
                        )
                    return _decode_result(encoded)
            result = await body(tx, now())
            if request_id:
                await tx.save_request(request_id, method, fingerprint, _encode_result(result), now())
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
        deployments, token = [], ""
        while True:
            page = await self.store.list_deployments(model_id, False, MAX_PAGE_SIZE, token)
            deployments.extend(page.items)
            token = page.next_page_token
            if not token:
                return model_id, deployments

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
        self, model_id: str, deployment_id: str, size: int, token: str, newest_first: bool = False
    ) -> Page:
        if model_id:
            model_id = (await find_model(self.store, model_id)).id
        if deployment_id:
            await require_deployment(self.store, deployment_id)
        return await self.store.list_events(model_id, deployment_id, page_size(size), token, newest_first)

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
    ) -> Result:
        """`model_name`, when given, is the model pushed to whatever config.yaml says (as
        `truss push --model-name`); without it config.yaml must name the model. `metadata`
        (`truss push --metadata`) is recorded in the deployment's event log."""
        if not archive:
            raise InvalidArgument("MALFORMED_PACKAGE", "package_archive is empty")
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
            await tx.record_package(digest, len(archive), at)
            model = await tx.get_live_model_by_name(model_name)
            created = model is None
            if model is None:
                model = await tx.insert_model(model_name, at)
                await tx.add_event(at, model.id, "", "model.created", f"model {model_name!r} created")
            if target is PushTarget.DEVELOPMENT:
                deployment = await self._push_development(tx, model, digest, at)
            else:
                if target is PushTarget.PRODUCTION:
                    domain.require_no_promotion_in_flight(model)
                deployment = await self._create_published(
                    tx, model, digest, deployment_name, at, promote=target is PushTarget.PRODUCTION
                )
            for warning in warnings:
                await tx.add_event(at, model.id, deployment.id, "deployment.config_warning", warning)
            if metadata_json:
                await tx.add_event(at, model.id, deployment.id, "deployment.metadata", metadata_json)
            self.packages.commit(staged)  # the push is accepted: before the deployment is visible
            return Result(model=await tx.get_model(model.id), deployment=deployment, flag=created, warnings=warnings)

        try:
            return await self._mutate(
                "CreateDeployment", request_id, body, digest, target, deployment_name, model_name, metadata_json
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

    async def _create_published(
        self,
        tx: WriteTx,
        model: Model,
        digest: str,
        name: str,
        at: float,
        promote: bool,
        source: Deployment | None = None,
    ) -> Deployment:
        taken = await tx.deployment_names(model.id)
        next_number = model.next_deployment_number
        if name:
            validation.require_unique_name(name, taken, model.id)
        else:
            name, next_number = validation.default_deployment_name(next_number, taken)
        production = await tx.get_deployment(model.production_deployment_id) if model.production_deployment_id else None
        autoscaling = domain.promoted_autoscaling(production, self.limits) if promote else self.limits.defaults
        deployment = domain.new_deployment(
            new_id("d"), model.id, name, Kind.PUBLISHED, autoscaling, digest, at, source.id if source else None
        )
        await tx.insert_deployment(deployment)
        values: dict = {"next_deployment_number": next_number}
        if promote:
            values["promoting_deployment_id"] = deployment.id
        await tx.update_model(model.id, at, **values)
        origin = f" from development {source.id}" if source else ""
        await tx.add_event(
            at, model.id, deployment.id, "deployment.created", f"published deployment {name!r} created{origin}"
        )
        if promote:
            await tx.add_event(
                at,
                model.id,
                deployment.id,
                "model.promotion_started",
                f"{name!r} becomes production once it is ready",
            )
        return await require_deployment(tx, deployment.id)

    # --- deployment verbs -------------------------------------------------------

    async def promote(self, deployment_id: str, request_id: str) -> Result:
        async def body(tx: WriteTx, at: float) -> Result:
            deployment = await require_deployment(tx, deployment_id)
            domain.require_not_deleted(deployment)
            model = await require_model(tx, deployment.model_id)
            plan = domain.plan_promotion(model, deployment)
            if plan is PromotionKind.FROM_DEVELOPMENT:
                created = await self._create_published(
                    tx, model, deployment.package_digest, "", at, promote=True, source=deployment
                )
                return Result(deployment=created, flag=False)
            if plan is PromotionKind.IMMEDIATE:
                switched = await switch_production(tx, model, deployment, at)
                return Result(deployment=await require_deployment(tx, deployment.id), flag=switched)
            await tx.update_model(model.id, at, promoting_deployment_id=deployment.id)
            await tx.add_event(
                at,
                model.id,
                deployment.id,
                "model.promotion_started",
                f"{deployment.name!r} becomes production once it is ready",
            )
            return Result(deployment=await require_deployment(tx, deployment.id), flag=False)

        return await self._mutate("PromoteDeployment", request_id, body, deployment_id)

    async def _cancel_promotion_of(self, tx: WriteTx, deployment: Deployment, at: float, why: str) -> None:
        model = await tx.get_model(deployment.model_id)
        if model is not None and model.promoting_deployment_id == deployment.id:
            await tx.update_model(model.id, at, promoting_deployment_id=None)
            await tx.add_event(at, model.id, deployment.id, "model.promotion_cancelled", f"promotion cancelled: {why}")

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
                await self._cancel_promotion_of(tx, deployment, at, "the deployment was deactivated")
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
            await self._cancel_promotion_of(tx, deployment, at, "the deployment was deleted")
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
                taken = await tx.deployment_names(deployment.model_id)
                validation.require_unique_name(name, taken, deployment.model_id)
                values["name"] = name
            settings = replace(deployment.autoscaling, **autoscaling_changes)
            if settings != deployment.autoscaling:
                domain.check_autoscaling_change(deployment)
                validation.validate_autoscaling(settings, self.limits)
                values["autoscaling"] = settings
            if values:
                await tx.update_deployment(deployment.id, update_time=at, **values)
                changes = ", ".join(sorted(values))
                await tx.add_event(at, deployment.model_id, deployment.id, "deployment.updated", f"updated {changes}")
            return Result(deployment=await require_deployment(tx, deployment.id))

        return await self._mutate("UpdateDeployment", request_id, body, deployment_id, name, autoscaling_changes)

    async def delete_model(self, model_id: str, request_id: str) -> Result:
        async def body(tx: WriteTx, at: float) -> Result:
            model = await require_model(tx, model_id)
            for deployment in await tx.model_deployments(model.id):
                await tx.update_deployment(deployment.id, delete_time=at, update_time=at)
            await tx.update_model(model.id, at, delete_time=at, promoting_deployment_id=None)
            await tx.add_event(
                at, model.id, "", "model.deleted", f"model {model.name!r} and all its deployments deleted"
            )
            return Result(model=await tx.get_model(model.id))

        return await self._mutate("DeleteModel", request_id, body, model_id)
