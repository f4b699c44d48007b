"""Thin gRPC servicers: protobuf in, one lifecycle call, protobuf out.

Domain errors become statuses in controller/status.py (applied by the class
decorator); nothing here decides a rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from google.protobuf import json_format

from controller import convert
from controller.domain import Deployment
from controller.errors import InvalidArgument, Unavailable
from controller.keys import KeyManager, require_model_access
from controller.lifecycle import Lifecycle, page_size
from controller.live_reload import LiveReloader
from controller.replica_runtime import ReplicaHandle
from controller.routes import LoadTracker, RouteBroadcaster
from controller.status import map_domain_errors
from controller.store import Change
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import key_service_pb2 as ks
from slipway.v1 import key_service_pb2_grpc as ks_grpc
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import route_service_pb2 as rt
from slipway.v1 import route_service_pb2_grpc as rt_grpc


@map_domain_errors
class ModelServicer(ms_grpc.ModelServiceServicer):
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    async def GetModel(self, request, context):
        model = await self.lifecycle.get_model(request.model_id)
        rollouts = await self.lifecycle.store.active_rollouts([model.id])
        return ms.GetModelResponse(model=convert.model_to_proto(model, rollouts))

    async def ListModels(self, request, context):
        page = await self.lifecycle.list_models(request.page_size, request.page_token)
        rollouts = await self.lifecycle.store.active_rollouts([m.id for m in page.items])
        return ms.ListModelsResponse(
            models=[convert.model_to_proto(m, rollouts) for m in page.items], next_page_token=page.next_page_token
        )

    async def DeleteModel(self, request, context):
        result = await self.lifecycle.delete_model(request.model_id, request.request_id)
        return ms.DeleteModelResponse(model=convert.model_to_proto(result.model))


@map_domain_errors
class DeploymentServicer(ds_grpc.DeploymentServiceServicer):
    def __init__(
        self,
        lifecycle: Lifecycle,
        replicas_of: Callable[[str], list[ReplicaHandle]],
        live_reload: LiveReloader | None = None,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.lifecycle = lifecycle
        self.replicas_of = replicas_of
        self.live_reload = live_reload or LiveReloader(lifecycle, replicas_of, leading=leading)

    def _proto(self, deployment: Deployment):
        return convert.deployment_to_proto(deployment, self.replicas_of(deployment.id))

    async def CreateDeployment(self, request, context):
        result = await self.lifecycle.push(
            request.package_archive,
            request.package_sha256,
            convert.push_target(request.target),
            request.deployment_name,
            request.request_id,
            request.model_name,
            json_format.MessageToDict(request.metadata),
            request.environment,
        )
        return ds.CreateDeploymentResponse(
            model=convert.model_to_proto(result.model),
            deployment=self._proto(result.deployment),
            model_created=result.flag,
            warnings=list(result.warnings),
        )

    async def GetDeployment(self, request, context):
        return ds.GetDeploymentResponse(
            deployment=self._proto(await self.lifecycle.get_deployment(request.deployment_id))
        )

    async def ListDeployments(self, request, context):
        page = await self.lifecycle.list_deployments(
            request.model_id, request.show_deleted, request.page_size, request.page_token
        )
        return ds.ListDeploymentsResponse(
            deployments=[self._proto(d) for d in page.items], next_page_token=page.next_page_token
        )

    async def UpdateDeployment(self, request, context):
        name, autoscaling = convert.update_from_proto(request)
        result = await self.lifecycle.update_deployment(request.deployment.id, name, autoscaling, request.request_id)
        return ds.UpdateDeploymentResponse(deployment=self._proto(result.deployment))

    async def DeleteDeployment(self, request, context):
        result = await self.lifecycle.delete_deployment(request.deployment_id, request.request_id)
        return ds.DeleteDeploymentResponse(deployment=self._proto(result.deployment))

    async def ActivateDeployment(self, request, context):
        result = await self.lifecycle.activate(request.deployment_id, request.request_id)
        return ds.ActivateDeploymentResponse(deployment=self._proto(result.deployment))

    async def DeactivateDeployment(self, request, context):
        result = await self.lifecycle.deactivate(request.deployment_id, request.request_id)
        return ds.DeactivateDeploymentResponse(deployment=self._proto(result.deployment))

    async def PromoteDeployment(self, request, context):
        result = await self.lifecycle.promote(request.deployment_id, request.request_id, request.environment)
        return ds.PromoteDeploymentResponse(deployment=self._proto(result.deployment), completed=result.flag)

    async def WakeDeployment(self, request, context):
        require_model_access((await self.lifecycle.get_deployment(request.deployment_id)).model_id)
        result = await self.lifecycle.wake(request.deployment_id, request.request_id)
        return ds.WakeDeploymentResponse(deployment=self._proto(result.deployment))

    async def PatchDeployment(self, request, context):
        outcome = await self.live_reload.patch(
            request.deployment_id,
            request.base_package_digest,
            convert.patches_from_proto(request.patches),
            request.request_id,
        )
        return convert.patch_response(outcome, self._proto(outcome.deployment))

    async def ListUsageRecords(self, request, context):
        page, days = await self.lifecycle.list_usage(
            request.model_id, request.page_size, request.page_token, request.days
        )
        return ds.ListUsageRecordsResponse(
            usage_records=[convert.usage_to_proto(u, days.get(u.deployment_id, ())) for u in page.items],
            next_page_token=page.next_page_token,
        )

    async def ListEvents(self, request, context):
        if request.order not in (ds.EVENT_ORDER_UNSPECIFIED, ds.EVENT_ORDER_OLDEST_FIRST, ds.EVENT_ORDER_NEWEST_FIRST):
            raise InvalidArgument("INVALID_EVENT_ORDER", f"order {request.order} is not an EventOrder")
        page = await self.lifecycle.list_events(
            request.model_id,
            request.deployment_id,
            request.page_size,
            request.page_token,
            newest_first=request.order == ds.EVENT_ORDER_NEWEST_FIRST,
            environment=request.environment,
        )
        return ds.ListEventsResponse(
            events=[convert.event_to_proto(e) for e in page.items], next_page_token=page.next_page_token
        )

    async def WatchDeployments(self, request, context):
        changed: asyncio.Queue[Change] = asyncio.Queue()
        store = self.lifecycle.store
        store.add_listener(changed.put_nowait)
        try:
            model_id, initial = await self.lifecycle.watch_initial(request.model_id, request.deployment_id)
            known = {deployment.id for deployment in initial}  # what a reset reads again
            for deployment in initial:
                yield ds.WatchDeploymentsResponse(deployment=self._proto(deployment), initial=True)
            while True:
                changes = [await changed.get()]
                while not changed.empty():
                    changes.append(changed.get_nowait())
                ids = set().union(*(change.deployments for change in changes))
                if any(change.reset for change in changes):
                    # Changes may have been missed: list again, and look again at all sent so far.
                    ids |= known | await self.lifecycle.watch_relist(model_id, request.deployment_id)
                known |= ids
                for deployment_id in sorted(ids):
                    deployment = await store.get_deployment(deployment_id)
                    if deployment is None or request.deployment_id not in ("", deployment.id):
                        continue
                    if model_id and deployment.model_id != model_id:
                        continue
                    yield ds.WatchDeploymentsResponse(deployment=self._proto(deployment))
        finally:
            store.remove_listener(changed.put_nowait)


@map_domain_errors
class RouteServicer(rt_grpc.RouteServiceServicer):
    def __init__(
        self,
        routes: RouteBroadcaster,
        load: LoadTracker,
        lifecycle: Lifecycle,
        keys: KeyManager,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.routes = routes
        # Only the leader knows the replicas (and autoscales on the loads): gateways follow it.
        self.leading = leading
        self.load = load
        self.lifecycle = lifecycle
        self.keys = keys

    async def WatchRoutes(self, request, context):
        if not self.leading():
            raise Unavailable("NOT_LEADER", "this controller is not the leader: follow another one")
        async for message in self.routes.subscribe(request.gateway_id, request.acknowledges):
            yield message

    async def ReportLoad(self, request, context):
        self.load.record(request)
        for key_id in request.used_api_key_ids:
            self.keys.note_used(key_id)
        return rt.ReportLoadResponse()

    async def AckRoutes(self, request, context):
        self.routes.acknowledge(request.gateway_id, request.version)
        return rt.AckRoutesResponse()

    async def WakeRoute(self, request, context):
        result = await self.lifecycle.wake(request.deployment_id, "")
        return rt.WakeRouteResponse(state=f"DEPLOYMENT_STATE_{result.deployment.state.value}")


@map_domain_errors
class KeyServicer(ks_grpc.KeyServiceServicer):
    def __init__(self, keys: KeyManager) -> None:
        self.keys = keys

    async def CreateKey(self, request, context):
        ttl = request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else None
        row, secret = await self.keys.create(
            request.name, convert.scope_from_proto(request.scope), tuple(request.model_ids), ttl
        )
        return ks.CreateKeyResponse(key=convert.api_key_to_proto(row), secret_key=secret)

    async def ListKeys(self, request, context):
        page = await self.keys.list(request.show_revoked, page_size(request.page_size), request.page_token)
        return ks.ListKeysResponse(
            keys=[convert.api_key_to_proto(row) for row in page.items], next_page_token=page.next_page_token
        )

    async def RevokeKey(self, request, context):
        return ks.RevokeKeyResponse(key=convert.api_key_to_proto(await self.keys.revoke(request.key_id)))
