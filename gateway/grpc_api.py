"""The gRPC InferenceService. Replies are passed through as the replica's bytes:
InvokeResponse and PredictResponse share field numbers, so the gateway only appends
the answering deployment's ID (concatenated protobuf messages merge)."""

from __future__ import annotations

import asyncio
import functools

import grpc

from gateway.errors import GatewayError
from gateway.forwarder import Forwarder
from gateway.metrics import GRPC
from gateway.routing import DEVELOPMENT, PRODUCTION
from slipway.status import refuse_undecodable_requests, rich_status
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import replica_service_pb2 as rs

OK = grpc.StatusCode.OK.name
CANCELLED = grpc.StatusCode.CANCELLED.name
SERVICE = inf.DESCRIPTOR.services_by_name["InferenceService"].full_name


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

    # The two places a gRPC inference call is observed (gateway/metrics.py), by the code the caller gets.
    async def predict(self, request: inf.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        observation = self.forwarder.metrics.start(GRPC)
        try:
            deployment, raw = await self.forwarder.unary(
                self._resolve(request.target),
                rs.InvokeRequest(payload=request.payload, content_type=request.content_type),
                self._timeout(context),
                observation,
            )
        except GatewayError as error:
            observation.done(error.code.name)
            await context.abort_with_status(rich_status(error.code, error.reason, error.message))
        except asyncio.CancelledError:
            observation.done(CANCELLED)
            raise
        observation.done(OK)
        return raw + _answered_by(deployment.deployment_id)

    async def predict_stream(self, request: inf.PredictStreamRequest, context: grpc.aio.ServicerContext):
        observation = self.forwarder.metrics.start(GRPC)
        try:
            async for chunk in self.forwarder.stream(
                self._resolve(request.target),
                rs.InvokeStreamRequest(payload=request.payload, content_type=request.content_type),
                self._timeout(context),
                observation,
            ):
                yield chunk
                observation.streamed()
        except GatewayError as error:
            observation.done(error.code.name)
            await context.abort_with_status(rich_status(error.code, error.reason, error.message))
        except (asyncio.CancelledError, GeneratorExit):
            observation.done(CANCELLED)
            raise
        observation.done(OK)
