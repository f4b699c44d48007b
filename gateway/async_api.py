"""Async inference on the gateway (HTTP and gRPC). The gateway holds nothing: it resolves the
target as for predict (so the caller's key is checked for the model, and a new kind of route
— an environment — is one more case of the route index), then stores the request through the
controller's internal AsyncQueueService and answers once it is committed.

HTTP:
  POST /model/{model_id}/production/async_predict (…/development/…, …/environments/{name}/…,
       …/deployment/{id}/…)
       {"model_input": …, "webhook_endpoint"?: "https://…", "priority"?: 0|1|2,
        "max_time_in_queue_seconds"?: 10-259200}            → 202 {"request_id", "deployment_id"}
  GET    /async_request/{request_id}                          → 200 the request (slipway/async_json.py)
  DELETE /async_request/{request_id}                          → 200 the CANCELED request, or 409
  GET    /model/{model_id}/async_requests?status=&page_size=&page_token=  → 200 {"requests", "next_page_token"}
gRPC: InferenceService.AsyncPredict, GetAsyncRequest, CancelAsyncRequest, ListAsyncRequests.

Reading or cancelling a request needs a key that may call its model (inference scope, and
the model in the key's list when it has one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import grpc
from aiohttp import web

from gateway.errors import GatewayError, error_info_reason, refused_key
from gateway.follower import RouteFollower
from gateway.http_limits import BodyReader
from gateway.routing import DEVELOPMENT, PRODUCTION
from slipway import keys
from slipway.async_json import proto_fields, request_json
from slipway.auth import current_caller
from slipway.keys import AuthError
from slipway.status import refuse_undecodable_requests, rich_status
from slipway.v1 import async_service_pb2 as asv
from slipway.v1 import async_service_pb2_grpc as asv_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import route_service_pb2 as rt

SERVICE = inf.DESCRIPTOR.services_by_name["InferenceService"].full_name
BODY_FIELDS = frozenset({"model_input", "webhook_endpoint", "priority", "max_time_in_queue_seconds"})
ROUTES = {PRODUCTION: asv.ASYNC_ROUTE_PRODUCTION, DEVELOPMENT: asv.ASYNC_ROUTE_DEVELOPMENT}
CONTROLLER_TIMEOUT_SECONDS = 10.0
Resolver = Callable[[str, str, str], rt.DeploymentRoute]


def _bad(reason: str, message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def require_model_id(model_id: str) -> None:
    caller = current_caller.get()
    if caller is not None:
        try:
            keys.require_model(caller.key, model_id)
        except AuthError as error:
            raise refused_key(error) from None


def parse_body(body: bytes) -> dict[str, Any]:
    """The async_predict body, checked field by field."""
    try:
        fields = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("MALFORMED_REQUEST", f"the body is not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise _bad("MALFORMED_REQUEST", 'the body must be a JSON object: {"model_input": …}')
    unknown = sorted(set(fields) - BODY_FIELDS)
    if unknown:
        raise _bad("UNKNOWN_FIELD", f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(BODY_FIELDS))}")
    if "model_input" not in fields:
        raise _bad("MISSING_MODEL_INPUT", 'the body must have "model_input"')
    for name in ("priority", "max_time_in_queue_seconds"):
        value = fields.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
            raise _bad("INVALID_ARGUMENT_TYPE", f"{name} must be an integer")
    endpoint = fields.get("webhook_endpoint") or ""
    if not isinstance(endpoint, str):
        raise _bad("INVALID_ARGUMENT_TYPE", "webhook_endpoint must be a string")
    return {
        "payload": json.dumps(fields["model_input"], ensure_ascii=False).encode(),
        "webhook_endpoint": endpoint,
        "priority": fields.get("priority", 0),
        "max_time_in_queue_seconds": fields.get("max_time_in_queue_seconds", 0),
    }


class AsyncRequests:
    """What both fronts call: the controller's queue, with the caller's key checked."""

    def __init__(self, follower: RouteFollower, metadata: tuple[tuple[str, str], ...], resolver: Resolver) -> None:
        self.follower = follower
        self.metadata = metadata
        self.resolver = resolver

    def _stub(self) -> asv_grpc.AsyncQueueServiceStub:
        channel = self.follower.channel
        if channel is None:
            raise GatewayError(
                grpc.StatusCode.UNAVAILABLE,
                "CONTROLLER_UNAVAILABLE",
                f"the gateway follows no controller now (tried {self.follower.controller_address})",
            )
        return asv_grpc.AsyncQueueServiceStub(channel)

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub(), method)(
                request, timeout=CONTROLLER_TIMEOUT_SECONDS, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as error:
            reason = error_info_reason(error) or error.code().name
            raise GatewayError(error.code(), reason, error.details() or error.code().name) from None

    async def enqueue(
        self, model_ref: str, deployment_id: str, environment: str, fields: dict[str, Any], content_type: str
    ) -> asv.AsyncRequest:
        deployment = self.resolver(model_ref, deployment_id, environment)  # checks the key for the model
        route = asv.ASYNC_ROUTE_DEPLOYMENT if deployment_id else ROUTES.get(environment, asv.ASYNC_ROUTE_ENVIRONMENT)
        response = await self._call(
            "EnqueueAsyncRequest",
            asv.EnqueueAsyncRequestRequest(
                model_id=deployment.model_id,
                deployment_id=deployment.deployment_id,
                route=route,
                content_type=content_type,
                **fields,
            ),
        )
        return response.request

    async def get(self, request_id: str) -> asv.AsyncRequest:
        request = (await self._call("FetchAsyncRequest", asv.FetchAsyncRequestRequest(request_id=request_id))).request
        require_model_id(request.model_id)
        return request

    async def cancel(self, request_id: str) -> asv.AsyncRequest:
        await self.get(request_id)  # the key is checked before anything changes
        response = await self._call(
            "CancelQueuedAsyncRequest", asv.CancelQueuedAsyncRequestRequest(request_id=request_id)
        )
        return response.request

    async def list(
        self, model_ref: str, status: asv.AsyncRequestStatus, page_size: int, page_token: str
    ) -> asv.ListModelAsyncRequestsResponse:
        if not self.follower.synced.is_set():
            raise GatewayError(grpc.StatusCode.UNAVAILABLE, "ROUTES_UNAVAILABLE", "the gateway has no route table yet")
        model_id = self.follower.index.model(model_ref).model_id
        require_model_id(model_id)
        return await self._call(
            "ListModelAsyncRequests",
            asv.ListModelAsyncRequestsRequest(
                model_id=model_id, status=status, page_size=page_size, page_token=page_token
            ),
        )


# --- HTTP ---------------------------------------------------------------------------


def add_http_routes(
    app: web.Application, requests: AsyncRequests, bodies: BodyReader, prefixes: tuple[str, ...]
) -> None:
    def answer(error: GatewayError) -> web.Response:
        return web.json_response(error.to_json(), status=error.http_status)

    async def async_predict(request: web.Request) -> web.Response:
        try:
            async with bodies.read(request) as body:
                fields = parse_body(body)
            accepted = await requests.enqueue(
                request.match_info["model_id"],
                request.match_info.get("deployment_id", ""),
                request.match_info.get("environment", PRODUCTION),
                fields,
                "application/json",
            )
        except GatewayError as error:
            return answer(error)
        return web.json_response(
            {"request_id": accepted.request_id, "deployment_id": accepted.deployment_id}, status=202
        )

    async def get(request: web.Request) -> web.Response:
        try:
            found = await requests.get(request.match_info["request_id"])
        except GatewayError as error:
            return answer(error)
        return web.json_response(request_json(proto_fields(found)))

    async def cancel(request: web.Request) -> web.Response:
        try:
            cancelled = await requests.cancel(request.match_info["request_id"])
        except GatewayError as error:
            return answer(error)
        return web.json_response(request_json(proto_fields(cancelled)))

    async def list_requests(request: web.Request) -> web.Response:
        query = request.query
        try:
            status: asv.AsyncRequestStatus = asv.ASYNC_REQUEST_STATUS_UNSPECIFIED
            if query.get("status"):
                name = f"ASYNC_REQUEST_STATUS_{query['status'].upper()}"
                if name not in asv.AsyncRequestStatus.keys():
                    raise _bad(
                        "INVALID_STATUS",
                        "status must be one of QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, EXPIRED, CANCELED",
                    )
                status = cast(asv.AsyncRequestStatus, asv.AsyncRequestStatus.Value(name))
            try:
                page_size = int(query.get("page_size", "0"))
            except ValueError:
                raise _bad("INVALID_PAGE_SIZE", "page_size must be an integer") from None
            page = await requests.list(request.match_info["model_id"], status, page_size, query.get("page_token", ""))
        except GatewayError as error:
            return answer(error)
        return web.json_response(
            {
                "requests": [request_json(proto_fields(item)) for item in page.requests],
                "next_page_token": page.next_page_token,
            }
        )

    for prefix in prefixes:
        app.router.add_post(f"{prefix}/async_predict", async_predict, expect_handler=bodies.defer_continue)
    app.router.add_get("/async_request/{request_id}", get)
    app.router.add_delete("/async_request/{request_id}", cancel)
    app.router.add_get("/model/{model_id}/async_requests", list_requests)


# --- gRPC ---------------------------------------------------------------------------


class AsyncGrpcApi:
    def __init__(self, requests: AsyncRequests) -> None:
        self.requests = requests

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(method, message) -> grpc.RpcMethodHandler:
            return refuse_undecodable_requests(
                grpc.unary_unary_rpc_method_handler(
                    method, request_deserializer=message.FromString, response_serializer=lambda m: m.SerializeToString()
                )
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "AsyncPredict": unary(self.async_predict, inf.AsyncPredictRequest),
                "GetAsyncRequest": unary(self.get, inf.GetAsyncRequestRequest),
                "CancelAsyncRequest": unary(self.cancel, inf.CancelAsyncRequestRequest),
                "ListAsyncRequests": unary(self.list, inf.ListAsyncRequestsRequest),
            },
        )

    async def _abort(self, context: grpc.aio.ServicerContext, error: GatewayError) -> None:
        status = rich_status(error.code, error.reason, error.message)
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def async_predict(self, request: inf.AsyncPredictRequest, context) -> inf.AsyncPredictResponse:
        target = request.target
        environment = target.environment_name or (
            DEVELOPMENT if target.environment == inf.ENVIRONMENT_DEVELOPMENT else PRODUCTION
        )
        try:
            accepted = await self.requests.enqueue(
                target.model_id,
                target.deployment_id,
                environment,
                {
                    "payload": request.payload,
                    "webhook_endpoint": request.webhook_endpoint,
                    "priority": request.priority,
                    "max_time_in_queue_seconds": request.max_time_in_queue_seconds,
                },
                request.content_type or "application/json",
            )
        except GatewayError as error:
            await self._abort(context, error)
            raise
        return inf.AsyncPredictResponse(request_id=accepted.request_id, deployment_id=accepted.deployment_id)

    async def get(self, request: inf.GetAsyncRequestRequest, context) -> inf.GetAsyncRequestResponse:
        try:
            return inf.GetAsyncRequestResponse(request=await self.requests.get(request.request_id))
        except GatewayError as error:
            await self._abort(context, error)
            raise

    async def cancel(self, request: inf.CancelAsyncRequestRequest, context) -> inf.CancelAsyncRequestResponse:
        try:
            return inf.CancelAsyncRequestResponse(request=await self.requests.cancel(request.request_id))
        except GatewayError as error:
            await self._abort(context, error)
            raise

    async def list(self, request: inf.ListAsyncRequestsRequest, context) -> inf.ListAsyncRequestsResponse:
        try:
            page = await self.requests.list(request.model_id, request.status, request.page_size, request.page_token)
        except GatewayError as error:
            await self._abort(context, error)
            raise
        return inf.ListAsyncRequestsResponse(requests=page.requests, next_page_token=page.next_page_token)
