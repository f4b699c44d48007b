"""The gRPC InferenceService. Replies are passed through as the replica's bytes:
InvokeResponse and PredictResponse share field numbers, so the gateway only appends
the answering deployment's ID (concatenated protobuf messages merge).

Every call's trailing metadata carries its request ID (x-slipway-request-id): the
caller's valid x-request-id, or a fresh one; errors carry it too."""

from __future__ import annotations

import asyncio
import functools

import grpc

from gateway.errors import GatewayError
from gateway.forwarder import Forwarder
from gateway.metrics import CLIENT_LEFT, GRPC
from gateway.routing import DEVELOPMENT, PRODUCTION
from slipway import request_ids, tracing
from slipway.data_plane import INFERENCE_SERVICE, inference_handler
from slipway.status import rich_status
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import replica_service_pb2 as rs

OK = grpc.StatusCode.OK.name
CANCELLED = grpc.StatusCode.CANCELLED.name
SERVICE = INFERENCE_SERVICE
PREDICT_SPAN, PREDICT_STREAM_SPAN = f"{SERVICE}/Predict", f"{SERVICE}/PredictStream"


@functools.lru_cache(maxsize=4096)
def _answered_by(deployment_id: str) -> bytes:
    return inf.PredictResponse(deployment_id=deployment_id).SerializeToString()


class InferenceApi:
    def __init__(self, forwarder: Forwarder, resolver, default_timeout: float) -> None:
        self.forwarder = forwarder
        self.resolver = resolver
        self.default_timeout = default_timeout

    def handler(self) -> grpc.GenericRpcHandler:
        return inference_handler(self.predict, self.predict_stream)

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.default_timeout if remaining is None else min(remaining, self.default_timeout)

    def _resolve(self, target: inf.Target, request_id: str):
        environment = target.environment_name or (
            DEVELOPMENT if target.environment == inf.ENVIRONMENT_DEVELOPMENT else PRODUCTION
        )
        return lambda: self.resolver(target.model_id, target.deployment_id, environment, request_id)

    # The two places a gRPC inference call is observed (gateway/metrics.py), by the code the caller gets.
    async def predict(self, request: inf.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        with tracing.grpc_server_span(PREDICT_SPAN, context, request.target.model_id):
            return await self._predict(request, context)

    async def _predict(self, request: inf.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        observation = self.forwarder.metrics.start(GRPC)
        request_id = _request_id(context)
        try:
            deployment, raw = await self.forwarder.unary(
                self._resolve(request.target, request_id),
                rs.InvokeRequest(payload=request.payload, content_type=request.content_type),
                self._timeout(context),
                request_id,
                observation=observation,
            )
        except GatewayError as error:
            observation.done(error.code.name, error.http_status)
            await _abort(context, error, request_id)
        except asyncio.CancelledError:
            observation.done(CANCELLED, CLIENT_LEFT)
            raise
        observation.done(OK, 200)
        return raw + _answered_by(deployment.deployment_id)

    async def predict_stream(self, request: inf.PredictStreamRequest, context: grpc.aio.ServicerContext):
        with tracing.grpc_server_span(PREDICT_STREAM_SPAN, context, request.target.model_id):
            async for chunk in self._predict_stream(request, context):
                yield chunk

    async def _predict_stream(self, request: inf.PredictStreamRequest, context: grpc.aio.ServicerContext):
        observation = self.forwarder.metrics.start(GRPC)
        request_id = _request_id(context)
        try:
            async for chunk in self.forwarder.stream(
                self._resolve(request.target, request_id),
                rs.InvokeStreamRequest(payload=request.payload, content_type=request.content_type),
                self._timeout(context),
                request_id,
                observation=observation,
            ):
                yield chunk
                observation.streamed()
        except GatewayError as error:
            observation.done(error.code.name, error.http_status)
            await _abort(context, error, request_id)
        except (asyncio.CancelledError, GeneratorExit):
            observation.done(CANCELLED, CLIENT_LEFT)
            raise
        observation.done(OK, 200)


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The call's request ID, already set as its trailing metadata."""
    caller = next(
        (value for key, value in context.invocation_metadata() or () if key == request_ids.CALLER_METADATA_KEY),
        None,
    )
    request_id = request_ids.adopt(caller if isinstance(caller, str) else None)
    context.set_trailing_metadata(((request_ids.METADATA_KEY, request_id),))
    return request_id


async def _abort(context: grpc.aio.ServicerContext, error: GatewayError, request_id: str) -> None:
    # abort replaces the trailing metadata set before: the ID goes in again, beside the status details.
    status = rich_status(error.code, error.reason, error.message)
    await context.abort(
        status.code, status.details, (*status.trailing_metadata, (request_ids.METADATA_KEY, request_id))
    )
