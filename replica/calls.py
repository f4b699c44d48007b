"""A replica's model calls, whatever front takes them: the ReplicaService the Python
gateway calls (replica/servicer.py), and the InferenceService and HTTP predict route the
native data plane forwards to directly (replica/direct.py).

A call the replica refuses or fails raises `Refusal` (a gRPC code, an ErrorInfo reason
or none, a message); each front turns it into its own answer. The in-flight count, the
drain (new calls refused) and the size bounds are shared by every front."""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import grpc

from replica import codec, typed
from replica.capture import REQUEST_ID
from replica.log import Logger
from replica.metrics import METRICS
from replica.model_request import CallState
from replica.predictor import ChunkStream, MethodNotImplemented, ModelError, Predictor, StreamStalled
from slipway import limits
from slipway.process import wait_event
from slipway.status import rich_status
from slipway.v1 import replica_service_pb2 as pb

MODEL_METHOD_NOT_IMPLEMENTED = "MODEL_METHOD_NOT_IMPLEMENTED"
STREAM_STALLED = "STREAM_STALLED"
MODEL_CALL_FAILURES = (
    ModelError,
    codec.ResultEncodingError,
    typed.InputValidationError,
    MethodNotImplemented,
    StreamStalled,
)
# Builds what a model method asking for Truss's `request` gets (only called when it asks).
CallStateFactory = Callable[[], CallState]


class Refusal(Exception):
    """A call answered with an error status; `reason` "" has no ErrorInfo."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}

    def status(self) -> grpc.Status:
        return rich_status(self.code, self.reason, self.message, self.metadata)

    async def abort(self, context: grpc.aio.ServicerContext) -> NoReturn:
        """End the gRPC call with this status (as ReplicaService has always answered)."""
        if self.reason:
            await context.abort_with_status(self.status())
        else:
            await context.abort(self.code, self.message)
        raise AssertionError("unreachable: context.abort raises")


class ModelCalls:
    def __init__(self, log: Logger, max_request_bytes: int = limits.DEFAULT_MAX_REQUEST_BYTES) -> None:
        self.log = log
        self.max_bytes = max_request_bytes
        self.predictor: Predictor | None = None
        self.refusing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        METRICS.watch_in_flight(lambda: self._in_flight)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no model call is in flight; False if `timeout` passed first."""
        return await wait_event(self._idle, timeout)

    @contextlib.contextmanager
    def tracked(self, request_id: str | None = None) -> Iterator[None]:
        """Counts the call in flight; with `request_id`, every log line written while the
        call runs carries it."""
        self._in_flight += 1
        self._idle.clear()
        token = REQUEST_ID.set(request_id) if request_id is not None else None
        try:
            yield
        finally:
            if token is not None:
                REQUEST_ID.reset(token)
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def require_predictor(self) -> Predictor:
        if self.refusing:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "replica is shutting down")
        if self.predictor is None:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "model is not loaded yet")
        return self.predictor

    async def invoke(
        self,
        request: pb.InvokeRequest | pb.InvokeStreamRequest,
        call_state: CallStateFactory,
        gateway_limit: int | None = None,
    ) -> pb.InvokeResponse:
        """One answer (a streaming model's chunks joined), within the size limit; the request
        within `gateway_limit` too (the native plane's gateway's, which it did not check)."""
        predictor = self.require_predictor()
        model_input = self._decode(request, gateway_limit)
        try:
            call = call_state() if predictor.wants_request(request.method) else None
            async with predictor.run(model_input, codec.encode_chunk, request.method, call) as result:
                if isinstance(result, ChunkStream):
                    payload, content_type = await self._join(result)
                else:
                    payload, content_type = codec.encode_result(result, request.content_type)
        except MODEL_CALL_FAILURES as exc:
            raise self._model_call_refusal(exc) from None
        self._check_answer(len(payload), "the model's response")
        return pb.InvokeResponse(payload=payload, content_type=content_type)

    async def invoke_stream(
        self, request: pb.InvokeStreamRequest, call_state: CallStateFactory, gateway_limit: int | None = None
    ) -> AsyncIterator[pb.InvokeStreamResponse]:
        """The model's chunks (a returned value: one chunk marked complete). A model error
        mid-stream raises Refusal after the chunks already yielded."""
        predictor = self.require_predictor()
        model_input = self._decode(request, gateway_limit)
        try:
            call = call_state() if predictor.wants_request(request.method) else None
            async with predictor.run(model_input, codec.encode_chunk, request.method, call) as result:
                if isinstance(result, ChunkStream):
                    async for data, content_type in result:
                        self._check_answer(len(data), "a chunk of the model's stream")
                        yield pb.InvokeStreamResponse(chunk=data, content_type=content_type)
                else:
                    data, content_type = codec.encode_result(result, request.content_type)
                    self._check_answer(len(data), "the model's response")
                    yield pb.InvokeStreamResponse(chunk=data, content_type=content_type, complete=True)
        except MODEL_CALL_FAILURES as exc:
            raise self._model_call_refusal(exc) from None

    async def _join(self, stream: ChunkStream) -> tuple[bytes, str]:
        encoded, size = [], 0
        async for data, content_type in stream:
            size += len(data)
            self._check_answer(size, "the model's stream joined into one response (so far)")
            encoded.append((data, content_type))
        return codec.join_chunks(encoded)

    def _check_answer(self, size: int, what: str) -> None:
        if size > self.max_bytes:
            message = limits.too_large(what, size, self.max_bytes)
            self.log.error("response_too_large", error=message)
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message, limits.RESPONSE_TOO_LARGE)

    def _decode(self, request: pb.InvokeRequest | pb.InvokeStreamRequest, gateway_limit: int | None) -> Any:
        size = len(request.payload)
        # Over both limits, the gateway's is named: on the Python plane the gateway refuses first.
        limit = gateway_limit if gateway_limit is not None and size > gateway_limit else self.max_bytes
        if size > limit:
            message = limits.too_large("the request body", size, limit)
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message, limits.REQUEST_TOO_LARGE)
        try:
            return codec.decode_payload(request.payload, request.content_type)
        except codec.PayloadError as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def _model_call_refusal(self, exc: Exception) -> Refusal:
        if isinstance(exc, MethodNotImplemented):
            return Refusal(grpc.StatusCode.NOT_FOUND, str(exc), MODEL_METHOD_NOT_IMPLEMENTED)
        if isinstance(exc, StreamStalled):
            self.log.error("stream_stalled", error=str(exc))
            return Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc), STREAM_STALLED)
        if isinstance(exc, typed.InputValidationError):
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc), typed.INPUT_VALIDATION_FAILED)
        cause = exc.cause if isinstance(exc, ModelError) else exc
        answered = typed.http_exception(cause)
        if answered is not None:  # the model chose its answer: passed on as that status, as in Truss
            http_status, detail, detail_is_json = answered
            self.log.info("predict_http_error", status=http_status, detail=detail)
            metadata = {"http_status": str(http_status), "detail_is_json": "true" if detail_is_json else "false"}
            return Refusal(typed.grpc_code(http_status), detail, typed.MODEL_HTTP_ERROR, metadata)
        self.log.error("predict_failed", error=str(exc), traceback="".join(traceback.format_exception(cause)))
        return Refusal(grpc.StatusCode.INTERNAL, str(exc))
