"""EnvironmentService: protobuf in, one EnvironmentOps call, protobuf out (domain errors become
statuses in controller/status.py)."""

from __future__ import annotations

import dataclasses

from controller.convert import timestamp
from controller.domain import AUTOSCALING_FIELDS
from controller.environment_ops import EnvironmentOps
from controller.environments import Environment
from controller.errors import InvalidArgument
from controller.status import map_domain_errors
from slipway.v1 import environment_service_pb2 as es
from slipway.v1 import environment_service_pb2_grpc as es_grpc
from slipway.v1 import resources_pb2 as r

SETTINGS = "autoscaling_settings"


def autoscaling_changes(settings: r.AutoscalingSettings, paths: list[str]) -> dict[str, int]:
    """{field: value} of the settings named by `paths` (an update mask), or without paths the
    ones that are non-zero (proto3 scalars have no presence: a zero needs a mask)."""
    if not paths:
        return {f: getattr(settings, f) for f in AUTOSCALING_FIELDS if getattr(settings, f)}
    changes: dict[str, int] = {}
    for path in paths:
        if path == SETTINGS:
            changes.update({f: getattr(settings, f) for f in AUTOSCALING_FIELDS})
        elif path.startswith(f"{SETTINGS}.") and path.split(".", 1)[1] in AUTOSCALING_FIELDS:
            field = path.split(".", 1)[1]
            changes[field] = getattr(settings, field)
        else:
            updatable = ", ".join([SETTINGS] + [f"{SETTINGS}.{f}" for f in AUTOSCALING_FIELDS])
            raise InvalidArgument(
                "INVALID_UPDATE_MASK", f"update_mask path {path!r} is not updatable (updatable: {updatable})", path=path
            )
    return changes


@map_domain_errors
class EnvironmentServicer(es_grpc.EnvironmentServiceServicer):
    def __init__(self, ops: EnvironmentOps) -> None:
        self.ops = ops

    def _proto(self, environment: Environment) -> es.ModelEnvironment:
        return es.ModelEnvironment(
            model_id=environment.model_id,
            name=environment.name,
            deployment_id=environment.deployment_id or "",
            promoting_deployment_id=environment.promoting_deployment_id or "",
            autoscaling_settings=r.AutoscalingSettings(**dataclasses.asdict(self.ops.settings_of(environment))),
            create_time=timestamp(environment.create_time),
            update_time=timestamp(environment.update_time),
            delete_time=timestamp(environment.delete_time),
        )

    async def CreateEnvironment(self, request, context):
        given = request.environment
        result = await self.ops.create(
            request.model_id, given.name, autoscaling_changes(given.autoscaling_settings, []), request.request_id
        )
        assert result.environment is not None
        return es.CreateEnvironmentResponse(environment=self._proto(result.environment))

    async def GetEnvironment(self, request, context):
        return es.GetEnvironmentResponse(environment=self._proto(await self.ops.get(request.model_id, request.name)))

    async def ListEnvironments(self, request, context):
        page = await self.ops.list(request.model_id, request.page_size, request.page_token)
        return es.ListEnvironmentsResponse(
            environments=[self._proto(e) for e in page.items], next_page_token=page.next_page_token
        )

    async def UpdateEnvironment(self, request, context):
        given = request.environment
        changes = autoscaling_changes(given.autoscaling_settings, list(request.update_mask.paths))
        if not changes:
            raise InvalidArgument(
                "EMPTY_UPDATE",
                "nothing to update: without an update_mask only the autoscaling settings set to non-zero values are "
                "updated; to set one to 0, name it in update_mask (for example autoscaling_settings.min_replica)",
            )
        result = await self.ops.update(given.model_id, given.name, changes, request.request_id)
        assert result.environment is not None
        return es.UpdateEnvironmentResponse(environment=self._proto(result.environment))

    async def DeleteEnvironment(self, request, context):
        result = await self.ops.delete(request.model_id, request.name, request.request_id)
        assert result.environment is not None
        return es.DeleteEnvironmentResponse(environment=self._proto(result.environment))
