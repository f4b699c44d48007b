"""Thin servicers of async inference: AsyncQueueService (internal: gateways, with the
controller's internal token) and WebhookSecretService (public, deploy scope)."""

from __future__ import annotations

from typing import cast

from controller.async_queue import AsyncQueue
from controller.convert import timestamp
from controller.status import map_domain_errors
from controller.store.async_requests import AsyncRequestRow
from slipway.v1 import async_service_pb2 as asv
from slipway.v1 import async_service_pb2_grpc as asv_grpc

ROUTE_FROM_PROTO = {
    asv.ASYNC_ROUTE_PRODUCTION: "production",
    asv.ASYNC_ROUTE_DEVELOPMENT: "development",
    asv.ASYNC_ROUTE_DEPLOYMENT: "deployment",
    asv.ASYNC_ROUTE_ENVIRONMENT: "environment",
}
ROUTE_TO_PROTO = {name: value for value, name in ROUTE_FROM_PROTO.items()}
STATUS_TO_PROTO: dict[str, asv.AsyncRequestStatus] = {
    name.removeprefix("ASYNC_REQUEST_STATUS_"): cast(asv.AsyncRequestStatus, value)
    for name, value in asv.AsyncRequestStatus.items()
}
STATUS_FROM_PROTO = {value: name for name, value in STATUS_TO_PROTO.items() if value}
WEBHOOK_TO_PROTO: dict[str, asv.WebhookStatus] = {
    name.removeprefix("WEBHOOK_STATUS_"): cast(asv.WebhookStatus, value) for name, value in asv.WebhookStatus.items()
}


def to_proto(row: AsyncRequestRow) -> asv.AsyncRequest:
    return asv.AsyncRequest(
        request_id=row.id,
        model_id=row.model_id,
        deployment_id=row.deployment_id,
        status=STATUS_TO_PROTO[row.status],
        webhook_status=WEBHOOK_TO_PROTO[row.webhook_status],
        priority=row.priority,
        create_time=timestamp(row.create_time),
        queue_deadline=timestamp(row.queue_deadline),
        start_time=timestamp(row.start_time),
        finish_time=timestamp(row.finish_time),
        attempts=row.attempts,
        output=row.output or b"",
        output_content_type=row.output_content_type,
        error_code=row.error_code,
        error_reason=row.error_reason,
        error_message=row.error_message,
        webhook_endpoint=row.webhook_endpoint,
        webhook_attempts=row.webhook_attempts,
        webhook_error=row.webhook_error,
        route=ROUTE_TO_PROTO.get(row.route, asv.ASYNC_ROUTE_UNSPECIFIED),
    )


@map_domain_errors
class AsyncQueueServicer(asv_grpc.AsyncQueueServiceServicer):
    def __init__(self, queue: AsyncQueue) -> None:
        self.queue = queue

    async def EnqueueAsyncRequest(self, request, context):
        row = await self.queue.enqueue(
            request.model_id,
            request.deployment_id,
            ROUTE_FROM_PROTO.get(request.route, ""),
            request.payload,
            request.content_type or "application/json",
            request.webhook_endpoint,
            request.priority,
            request.max_time_in_queue_seconds,
        )
        return asv.EnqueueAsyncRequestResponse(request=to_proto(row))

    async def FetchAsyncRequest(self, request, context):
        return asv.FetchAsyncRequestResponse(request=to_proto(await self.queue.get(request.request_id)))

    async def CancelQueuedAsyncRequest(self, request, context):
        return asv.CancelQueuedAsyncRequestResponse(request=to_proto(await self.queue.cancel(request.request_id)))

    async def ListModelAsyncRequests(self, request, context):
        page = await self.queue.list(
            request.model_id, STATUS_FROM_PROTO.get(request.status, ""), request.page_size, request.page_token
        )
        return asv.ListModelAsyncRequestsResponse(
            requests=[to_proto(row) for row in page.items], next_page_token=page.next_page_token
        )


@map_domain_errors
class WebhookSecretServicer(asv_grpc.WebhookSecretServiceServicer):
    def __init__(self, queue: AsyncQueue) -> None:
        self.queue = queue

    async def RotateWebhookSecret(self, request, context):
        model_id, secret = await self.queue.rotate_secret(request.model_id)
        return asv.RotateWebhookSecretResponse(model_id=model_id, secret=secret)

    async def DeleteWebhookSecret(self, request, context):
        await self.queue.delete_secret(request.model_id)
        return asv.DeleteWebhookSecretResponse()
