"""The environment calls (EnvironmentService): create, read, change the autoscaling of and
delete a model's environments, each mutation one transaction of the lifecycle's (idempotent
by request_id). The rules are controller/environments.py's; promotion into an environment is
controller/promotion.py's."""

from __future__ import annotations

from dataclasses import replace

from controller import environments, validation
from controller.environments import Environment
from controller.lifecycle import Lifecycle, Result, page_size
from controller.lookups import require_deployment, require_model
from controller.promotion import cancel_promotion_of, require_environment
from controller.store import Page, WriteTx


class EnvironmentOps:
    def __init__(self, lifecycle: Lifecycle, max_environments: int = environments.DEFAULT_MAX_ENVIRONMENTS) -> None:
        self.lifecycle = lifecycle
        self.store = lifecycle.store
        self.max_environments = max_environments

    def settings_of(self, environment: Environment):
        return environment.settings(self.lifecycle.limits)

    async def get(self, model_id: str, name: str) -> Environment:
        model = await require_model(self.store, model_id)
        return await require_environment(self.store, model, name)

    async def list(self, model_id: str, size: int, token: str) -> Page:
        model = await require_model(self.store, model_id)
        return await self.store.list_environments(model.id, page_size(size), token)

    async def create(self, model_id: str, name: str, autoscaling: dict[str, int], request_id: str) -> Result:
        limits = self.lifecycle.limits
        settings = replace(limits.defaults, **autoscaling) if autoscaling else None
        if settings is not None:
            validation.validate_autoscaling(settings, limits)

        async def body(tx: WriteTx, at: float) -> Result:
            model = await require_model(tx, model_id)
            environments.check_create(name, await tx.model_environments(model.id), self.max_environments)
            await tx.insert_environment(model.id, name, settings, at)
            shown = ", ".join(f"{k} {v}" for k, v in sorted(autoscaling.items())) or "the default autoscaling"
            await tx.add_event(at, model.id, "", "environment.created", f"environment {name!r} created ({shown})", name)
            return Result(environment=await tx.get_environment(model.id, name))

        return await self.lifecycle._mutate("CreateEnvironment", request_id, body, model_id, name, autoscaling)

    async def update(self, model_id: str, name: str, autoscaling: dict[str, int], request_id: str) -> Result:
        """New autoscaling settings for the environment and, if it has one, its deployment."""

        async def body(tx: WriteTx, at: float) -> Result:
            model = await require_model(tx, model_id)
            environment = await require_environment(tx, model, name)
            current = self.settings_of(environment)
            settings = replace(current, **autoscaling)
            if settings != current:
                environments.check_autoscaling_change(environment)
                validation.validate_autoscaling(settings, self.lifecycle.limits)
                await tx.update_environment(model.id, name, at, autoscaling=settings)
                changed = ", ".join(f"{k} {v}" for k, v in sorted(autoscaling.items()))
                await tx.add_event(at, model.id, "", "environment.updated", f"autoscaling set: {changed}", name)
                if environment.deployment_id:
                    deployment = await require_deployment(tx, environment.deployment_id)
                    await tx.update_deployment(deployment.id, autoscaling=settings, update_time=at)
                    await tx.add_event(
                        at,
                        model.id,
                        deployment.id,
                        "deployment.updated",
                        f"updated autoscaling (the settings of {name})",
                        name,
                    )
            return Result(environment=await tx.get_environment(model.id, name))

        return await self.lifecycle._mutate("UpdateEnvironment", request_id, body, model_id, name, autoscaling)

    async def delete(self, model_id: str, name: str, request_id: str) -> Result:
        async def body(tx: WriteTx, at: float) -> Result:
            model = await require_model(tx, model_id)
            environment = await require_environment(tx, model, name)
            environments.check_delete(environment)
            if environment.promoting_deployment_id:
                candidate = await require_deployment(tx, environment.promoting_deployment_id)
                await cancel_promotion_of(tx, candidate, at, f"environment {name} was deleted")
            await tx.update_environment(model.id, name, at, delete_time=at)
            kept = f"; its deployment {environment.deployment_id} stays published" if environment.deployment_id else ""
            await tx.add_event(
                at,
                model.id,
                environment.deployment_id or "",
                "environment.deleted",
                f"environment {name!r} deleted{kept}",
                name,
            )
            return Result(
                environment=replace(environment, promoting_deployment_id=None, delete_time=at, update_time=at)
            )

        return await self.lifecycle._mutate("DeleteEnvironment", request_id, body, model_id, name)
