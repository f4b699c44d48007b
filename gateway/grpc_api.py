"""The gRPC InferenceService. Replies are passed through as the replica's bytes:
InvokeResponse and PredictResponse share field numbers, so the gateway only appends
the answering deployment's ID (concatenated protobuf messages merge)."""

from __future__ import annotations

import functools

import grpc

from gateway.errors import GatewayError
from gateway.forwarder import Forwarder
from gateway.routing import DEVELOPMENT, PRODUCTION
from slipway import tracing
from slipway.status import refuse_undecodable_requests, rich_status
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import replica_service_pb2 as rs

SERVICE = inf.DESCRIPTOR.services_by_name["InferenceService"].full_name
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
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Predict": refuse_undecodable_requests(
                    grpc.unary_unary_rpc_method_handler(
                        self.predict, request_deserializer=inf.PredictRequest.FromString, response_serializer=bytes
                    )
                ),
                "PredictStream": refuse_undecodable_requests(
                    grpc.unary_stream_rpc_method_handler(
                        self.predict_stream,
                        request_deserializer=inf.PredictStreamRequest.FromString,
                        response_serializer=bytes,
                    )
                ),
            },
        )

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.default_timeout if remaining is None else min(remaining, self.default_timeout)

    def _resolve(self, target: inf.Target):
        environment = DEVELOPMENT if target.environment == inf.ENVIRONMENT_DEVELOPMENT else PRODUCTION
        return lambda: self.resolver(target.model_id, target.deployment_id, environment)

    async def predict(self, request: inf.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        with tracing.grpc_server_span(PREDICT_SPAN, context, request.target.model_id):
            return await self._predict(request, context)

    async def _predict(self, request: inf.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        try:
            deployment, raw = await self.forwarder.unary(
                self._resolve(request.target),
                rs.InvokeRequest(payload=request.payload, content_type=request.content_type),
                self._timeout(context),
            )
        except GatewayError as error:
            await context.abort_with_status(rich_status(error.code, error.reason, error.message))
        return raw + _answered_by(deployment.deployment_id)

    async def predict_stream(self, request: inf.PredictStreamRequest, context: grpc.aio.ServicerContext):
        with tracing.grpc_server_span(PREDICT_STREAM_SPAN, context, request.target.model_id):
            async for chunk in self._predict_stream(request, context):
                yield chunk

    async def _predict_stream(self, request: inf.PredictStreamRequest, context: grpc.aio.ServicerContext):
        try:
            async for chunk in self.forwarder.stream(
                self._resolve(request.target),
                rs.InvokeStreamRequest(payload=request.payload, content_type=request.content_type),
                self._timeout(context),
            ):
                yield chunk
        except GatewayError as error:
            await context.abort_with_status(rich_status(error.code, error.reason, error.message))
