"""Route resolution over the controller's route table (pure: no I/O).

model ID (or name) → the model's production deployment; model + an environment name
→ that environment's deployment (of its two during a rolling promotion, the one the
request ID's hash picks: gateway/traffic_split.py); model + `development` → its
development deployment; deployment ID → that deployment. Every miss says which kind
of miss it is: unknown, deleted, deactivated, or no such environment. A
deployment that failed to start (and has no replica left) is refused at once rather
than waited for: nothing will start until it is changed.
"""

from __future__ import annotations

import grpc

from gateway import traffic_split
from gateway.errors import GatewayError, not_found
from slipway.keys import SCOPE_FROM_PROTO, KeyRecord
from slipway.v1 import resources_pb2 as r
from slipway.v1 import route_service_pb2 as rt

PRODUCTION = "production"
DEVELOPMENT = "development"
# States in which no replica will start until the deployment is changed (a push) or activated again.
FAILED_STATES = frozenset(
    {r.DEPLOYMENT_STATE_DEPLOY_FAILED, r.DEPLOYMENT_STATE_BUILD_FAILED, r.DEPLOYMENT_STATE_FAILED}
)


class RouteIndex:
    """The gateway's copy of the route table, built from a reset and kept current by deltas."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.version = 0
        self.models: dict[str, rt.ModelRoute] = {}
        self.models_by_name: dict[str, rt.ModelRoute] = {}
        self.deployments: dict[str, rt.DeploymentRoute] = {}
        self.deleted_models: set[str] = set()
        self.deleted_deployments: set[str] = set()
        self.api_keys: dict[str, KeyRecord] = {}

    def apply(self, message: rt.WatchRoutesResponse) -> None:
        if message.reset:
            self._clear()
        for model in message.models:
            previous = self.models.get(model.model_id)
            if previous is not None and self.models_by_name.get(previous.model_name) is previous:
                del self.models_by_name[previous.model_name]
            self.models[model.model_id] = self.models_by_name[model.model_name] = model
        for model_id in message.deleted_model_ids:
            previous = self.models.pop(model_id, None)
            if previous is not None and self.models_by_name.get(previous.model_name) is previous:
                del self.models_by_name[previous.model_name]
            self.deleted_models.add(model_id)
        for deployment in message.deployments:
            self.deployments[deployment.deployment_id] = deployment
        for deployment_id in message.deleted_deployment_ids:
            self.deployments.pop(deployment_id, None)
            self.deleted_deployments.add(deployment_id)
        for key in message.api_keys:
            self.api_keys[key.key_id] = KeyRecord(
                key.key_id,
                key.key_sha256,
                SCOPE_FROM_PROTO[key.scope],
                frozenset(key.model_ids),
                key.expire_time or None,
                key.revoked,
            )
        self.version = message.version

    def model(self, model_ref: str) -> rt.ModelRoute:
        model = self.models.get(model_ref) or self.models_by_name.get(model_ref)
        if model is not None:
            return model
        if model_ref in self.deleted_models:
            raise not_found("MODEL_DELETED", f"model {model_ref} was deleted")
        raise not_found("MODEL_NOT_FOUND", f"no model {model_ref!r}")

    def resolve(
        self, model_ref: str, deployment_id: str = "", environment: str = PRODUCTION, request_id: str = ""
    ) -> rt.DeploymentRoute:
        if deployment_id:
            deployment = self._deployment(deployment_id)
            if model_ref:
                model = self.model(model_ref)
                if deployment.model_id != model.model_id:
                    raise not_found(
                        "DEPLOYMENT_NOT_IN_MODEL", f"deployment {deployment_id} does not belong to model {model_ref}"
                    )
            return self._require_servable(deployment, f"deployment {deployment_id}")
        if not model_ref:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT, "MISSING_TARGET", "a model ID or a deployment ID is required"
            )
        model = self.model(model_ref)
        if environment == DEVELOPMENT:
            if not model.development_deployment_id:
                raise not_found("NO_DEVELOPMENT_DEPLOYMENT", f"model {model_ref} has no development deployment")
            target = model.development_deployment_id
        else:
            target = self._environment_target(model, model_ref, environment, request_id)
        return self._require_servable(
            self._deployment(target), f"the {environment} deployment {target} of model {model_ref}"
        )

    @staticmethod
    def _environment_target(model: rt.ModelRoute, model_ref: str, environment: str, request_id: str) -> str:
        route = next((e for e in model.environments if e.name == environment), None)
        if route is None:
            if environment == PRODUCTION:
                raise not_found("NO_PRODUCTION_DEPLOYMENT", f"model {model_ref} has no production deployment")
            raise not_found("ENVIRONMENT_NOT_FOUND", f"model {model_ref} has no environment {environment[:64]!r}")
        target = traffic_split.choose(route.deployments, request_id)
        if target:
            return target
        if environment == PRODUCTION:
            raise not_found("NO_PRODUCTION_DEPLOYMENT", f"model {model_ref} has no production deployment")
        raise not_found(
            "NO_DEPLOYMENT_IN_ENVIRONMENT", f"the {environment} environment of model {model_ref} has no deployment"
        )

    def _deployment(self, deployment_id: str) -> rt.DeploymentRoute:
        deployment = self.deployments.get(deployment_id)
        if deployment is not None:
            return deployment
        if deployment_id in self.deleted_deployments:
            raise not_found("DEPLOYMENT_DELETED", f"deployment {deployment_id} was deleted")
        raise not_found("DEPLOYMENT_NOT_FOUND", f"no deployment {deployment_id!r}")

    @staticmethod
    def _require_servable(deployment: rt.DeploymentRoute, described: str) -> rt.DeploymentRoute:
        if not deployment.active:
            raise not_found("DEPLOYMENT_INACTIVE", f"{described} is deactivated")
        if deployment.state in FAILED_STATES and not deployment.endpoints:
            state = r.DeploymentState.Name(deployment.state).removeprefix("DEPLOYMENT_STATE_")
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "DEPLOYMENT_FAILED",
                f"{described} is {state}: {deployment.status_message or 'it failed to start'}; "
                "push a fixed package, or activate the deployment to try again",
            )
        return deployment
