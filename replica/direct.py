"""The replica's direct fronts: what the native data plane (slipway/data_plane.py) forwards
inference to without the Python gateway.

- gRPC `slipway.v1.InferenceService/Predict` and `/PredictStream`, on the replica's gRPC
  port, behind the same credential as ReplicaService (x-slipway-replica-token).
- HTTP `POST /predict` on the replica's own HTTP listener (`Endpoint.http_address`), the
  credential in the x-slipway-replica-token header (401 JSON without it): replica/direct_http.py.

Both answer exactly as the gateway does for the same call: the same statuses, ErrorInfo
reasons and JSON error bodies (gateway/errors.py), the same HTTP answer (gateway/relay.py),
the request ID (the caller's valid x-request-id, or a fresh one) in the trailing metadata
or the X-Slipway-Request-Id header, the response's deployment_id, and the call bounded by
its deadline and the request timeout. A gRPC call whose target names another deployment
or model is refused with FAILED_PRECONDITION ROUTE_MISMATCH: the proxy routed it by
metadata the message contradicts (an HTTP call names no target). The environment a target
names is not checked (a replica cannot know which of its model's environments it serves
at this moment)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from gateway.errors import GatewayError, from_status
from replica.calls import ModelCalls, Refusal
from replica.model_request import CallState
from slipway import limits, request_ids, tracing
from slipway.data_plane import INFERENCE_SERVICE, inference_handler
from slipway.internal_auth import REPLICA_TOKEN_HEADER
from slipway.status import MAX_METADATA_VALUE_BYTES, MAX_STATUS_MESSAGE_BYTES, rich_status
from slipway.text import shorten
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import replica_service_pb2 as rs

SERVICE = INFERENCE_SERVICE
PREDICT_SPAN, PREDICT_STREAM_SPAN = f"{SERVICE}/Predict", f"{SERVICE}/PredictStream"
ROUTE_MISMATCH = "ROUTE_MISMATCH"
# What the proxy adds to a call, not the caller's: kept from the model.
_PROXY_HEADERS = (REPLICA_TOKEN_HEADER, limits.GATEWAY_LIMIT_HEADER)
# What a gRPC client is told when its call's deadline passes (grpc core's own words).
DEADLINE_MESSAGE = "Deadline Exceeded"
DEFAULT_REQUEST_TIMEOUT_SECONDS = 600.0  # the gateway's default request timeout


@dataclasses.dataclass(frozen=True)
class Identity:
    """What this replica serves; a target naming something else is refused."""

    deployment_id: str = ""
    model_id: str = ""
    model_name: str = ""

    def mismatch(self, target: inf.Target) -> str:
        """Why `target` is not this replica's ("" when it is)."""
        if target.deployment_id and self.deployment_id and target.deployment_id != self.deployment_id:
            return f"this replica serves deployment {self.deployment_id}, not {target.deployment_id}"
        if target.model_id and self.model_id and target.model_id not in (self.model_id, self.model_name):
            return f"this replica serves model {self.model_id} ({self.model_name}), not {target.model_id}"
        return ""


def from_refusal(refusal: Refusal) -> GatewayError:
    """The replica's refusal as the gateway passes it on (gateway/errors.py's from_replica
    for the same status, as it would have travelled)."""
    message = shorten(refusal.message, MAX_STATUS_MESSAGE_BYTES) if refusal.reason else refusal.message
    metadata = {key: shorten(value, MAX_METADATA_VALUE_BYTES) for key, value in refusal.metadata.items()}
    return from_status(refusal.code, message or refusal.code.name, refusal.reason, metadata, 0)


def deadline_exceeded() -> GatewayError:
    return GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", DEADLINE_MESSAGE)


async def bounded(
    chunks: AsyncIterator[rs.InvokeStreamResponse], deadline: float
) -> AsyncGenerator[rs.InvokeStreamResponse, None]:
    """The model's chunks, each awaited by `deadline` (loop time); failures as GatewayError."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise deadline_exceeded() from None
            except Refusal as refusal:
                raise from_refusal(refusal) from None
            yield chunk


@functools.lru_cache(maxsize=16)
def _answered_by(deployment_id: str) -> bytes:
    return inf.PredictResponse(deployment_id=deployment_id).SerializeToString()


class DirectInference:
    """InferenceService on the replica (the native data plane's gRPC route)."""

    def __init__(self, calls: ModelCalls, identity: Identity, request_timeout: float) -> None:
        self.calls = calls
        self.identity = identity
        self.request_timeout = request_timeout

    def handler(self) -> grpc.GenericRpcHandler:
        return inference_handler(self.predict, self.predict_stream)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        timeout = self.request_timeout if remaining is None else min(remaining, self.request_timeout)
        return asyncio.get_running_loop().time() + timeout

    def _check_target(self, target: inf.Target) -> None:
        mismatch = self.identity.mismatch(target)
        if mismatch:
            raise GatewayError(grpc.StatusCode.FAILED_PRECONDITION, ROUTE_MISMATCH, mismatch)

    async def predict(self, request: inf.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        request_id = _request_id(context)
        with (
            tracing.grpc_server_span(PREDICT_SPAN, context, request.target.model_id),
            self.calls.tracked(request_id),
        ):
            try:
                self._check_target(request.target)
                invoke = rs.InvokeRequest(payload=request.payload, content_type=request.content_type)
                try:
                    async with asyncio.timeout_at(self._deadline(context)):
                        answer = await self.calls.invoke(
                            invoke, lambda: _call_state(request, context), _gateway_limit(context)
                        )
                except TimeoutError:
                    raise deadline_exceeded() from None
                except Refusal as refusal:
                    raise from_refusal(refusal) from None
            except GatewayError as error:
                await _abort(context, error, request_id)
        return answer.SerializeToString() + _answered_by(self.identity.deployment_id)

    async def predict_stream(self, request: inf.PredictStreamRequest, context: grpc.aio.ServicerContext):
        request_id = _request_id(context)
        with (
            tracing.grpc_server_span(PREDICT_STREAM_SPAN, context, request.target.model_id),
            self.calls.tracked(request_id),
        ):
            try:
                self._check_target(request.target)
                invoke = rs.InvokeStreamRequest(payload=request.payload, content_type=request.content_type)
                chunks = self.calls.invoke_stream(
                    invoke, lambda: _call_state(request, context), _gateway_limit(context)
                )
                async with contextlib.aclosing(bounded(chunks, self._deadline(context))) as answer:
                    async for chunk in answer:
                        yield chunk.SerializeToString()
            except GatewayError as error:
                await _abort(context, error, request_id)


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The call's request ID (as the gateway adopts it), already set as its trailing metadata."""
    caller = next(
        (value for key, value in context.invocation_metadata() or () if key == request_ids.CALLER_METADATA_KEY),
        None,
    )
    request_id = request_ids.adopt(caller if isinstance(caller, str) else None)
    context.set_trailing_metadata(((request_ids.METADATA_KEY, request_id),))
    return request_id


def _gateway_limit(context: grpc.aio.ServicerContext) -> int | None:
    """The limit of the gateway whose proxy forwarded the call (slipway/limits.py)."""
    metadata = context.invocation_metadata() or ()
    return limits.gateway_limit(next((value for key, value in metadata if key == limits.GATEWAY_LIMIT_HEADER), None))


def _call_state(request: inf.PredictRequest | inf.PredictStreamRequest, context: grpc.aio.ServicerContext) -> CallState:
    metadata = [
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if isinstance(value, str) and key not in _PROXY_HEADERS  # the model never sees the credential
    ]
    call = CallState(request.payload, [("content-type", request.content_type), *metadata])
    context.add_done_callback(lambda _: call.disconnected.set())
    return call


async def _abort(context: grpc.aio.ServicerContext, error: GatewayError, request_id: str) -> None:
    # As the gateway's: abort replaces the trailing metadata, so the ID goes in again.
    status = rich_status(error.code, error.reason, error.message)
    await context.abort(
        status.code, status.details, (*status.trailing_metadata, (request_ids.METADATA_KEY, request_id))
    )
