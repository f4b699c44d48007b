"""ReplicaService: decodes requests, runs the predictor, maps failures to status codes.

A request body, and each answer (a response, or one chunk of a stream), is at most
`max_request_bytes`; beyond it the call is refused with RESOURCE_EXHAUSTED and the
ErrorInfo reason REQUEST_TOO_LARGE or RESPONSE_TOO_LARGE.

Reload is for development replicas only (FAILED_PRECONDITION RELOAD_NOT_DEVELOPMENT
elsewhere) and loads a package the controller stored, named by its digest and found
under the packages root the replica was started with: never a path a caller names."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
import traceback
from collections.abc import Iterator
from typing import NoReturn

import grpc

from replica import codec, typed, websocket
from replica.capture import REQUEST_ID
from replica.log import Logger
from replica.metrics import METRICS
from replica.model_request import CallState
from replica.predictor import ChunkStream, MethodNotImplemented, ModelError, Predictor, StreamStalled
from replica.reload import ModelReloader
from slipway import limits, request_ids, tracing
from slipway.process import wait_event
from slipway.status import rich_status
from slipway.v1 import replica_service_pb2 as pb
from slipway.v1 import replica_service_pb2_grpc as pb_grpc

MODEL_METHOD_NOT_IMPLEMENTED = "MODEL_METHOD_NOT_IMPLEMENTED"
# InvokeRequest.method asking for the model's Truss schema rather than calling it.
SCHEMA = "schema"
NO_SCHEMA = "NO_SCHEMA"
STREAM_STALLED = "STREAM_STALLED"
MODEL_CALL_FAILURES = (
    ModelError,
    codec.ResultEncodingError,
    typed.InputValidationError,
    MethodNotImplemented,
    StreamStalled,
)
PACKAGE_DIGEST = re.compile(r"[0-9a-f]{64}")
INVOKE_SPAN, INVOKE_STREAM_SPAN = "slipway.v1.ReplicaService/Invoke", "slipway.v1.ReplicaService/InvokeStream"


class ReplicaServicer(pb_grpc.ReplicaServiceServicer):
    def __init__(
        self,
        log: Logger,
        max_request_bytes: int = limits.DEFAULT_MAX_REQUEST_BYTES,
        reload_root: pathlib.Path | None = None,
    ) -> None:
        self._log = log
        self._max_bytes = max_request_bytes
        # The controller's packages root on a development replica; None: Reload is refused.
        self._reload_root = reload_root
        self._predictor: Predictor | None = None
        self._reloader: ModelReloader | None = None
        self._refusing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        METRICS.watch_in_flight(lambda: self._in_flight)

    @property
    def predictor(self) -> Predictor | None:
        return self._predictor

    def attach(self, predictor: Predictor) -> None:
        """Start serving predictions; until then every call is UNAVAILABLE."""
        self._predictor = predictor

    def enable_reload(self, reloader: ModelReloader) -> None:
        """Accept Reload calls (once the first model is loaded)."""
        self._reloader = reloader

    def refuse_new_calls(self) -> None:
        """Drain: calls already running finish, new ones get UNAVAILABLE."""
        self._refusing = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no predict call is in flight; False if `timeout` passed first."""
        return await wait_event(self._idle, timeout)

    async def Invoke(self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext) -> pb.InvokeResponse:
        with self._tracked(context), tracing.grpc_server_span(INVOKE_SPAN, context):
            predictor = await self._require_predictor(context)
            if request.method == SCHEMA:
                if predictor.schema is None:
                    await abort_rich(context, grpc.StatusCode.NOT_FOUND, NO_SCHEMA, "No schema found")
                return pb.InvokeResponse(payload=json.dumps(predictor.schema).encode(), content_type=codec.JSON)
            model_input = await self._decode(request, context)
            try:
                call = _call_state(request, context) if predictor.wants_request(request.method) else None
                async with predictor.run(model_input, codec.encode_chunk, request.method, call) as result:
                    if isinstance(result, ChunkStream):
                        payload, content_type = await self._join(result, context)
                    else:
                        payload, content_type = codec.encode_result(result, request.content_type)
            except MODEL_CALL_FAILURES as exc:
                await self._abort_model_call(context, exc)
            await self._check_answer(len(payload), "the model's response", context)
            return pb.InvokeResponse(payload=payload, content_type=content_type)

    async def InvokeStream(self, request: pb.InvokeStreamRequest, context: grpc.aio.ServicerContext) -> None:
        """A model error mid-stream ends the call with INTERNAL after the chunks already sent
        (the HTTP front then ends its response cleanly, as Truss does)."""
        with self._tracked(context), tracing.grpc_server_span(INVOKE_STREAM_SPAN, context):
            predictor = await self._require_predictor(context)
            model_input = await self._decode(request, context)
            try:
                call = _call_state(request, context) if predictor.wants_request(request.method) else None
                async with predictor.run(model_input, codec.encode_chunk, request.method, call) as result:
                    if isinstance(result, ChunkStream):
                        async for data, content_type in result:
                            await self._check_answer(len(data), "a chunk of the model's stream", context)
                            await context.write(pb.InvokeStreamResponse(chunk=data, content_type=content_type))
                    else:
                        data, content_type = codec.encode_result(result, request.content_type)
                        await self._check_answer(len(data), "the model's response", context)
                        await context.write(
                            pb.InvokeStreamResponse(chunk=data, content_type=content_type, complete=True)
                        )
            except MODEL_CALL_FAILURES as exc:
                await self._abort_model_call(context, exc)

    async def InvokeWebsocket(self, requests, context: grpc.aio.ServicerContext) -> None:
        with self._tracked(context):
            predictor = await self._require_predictor(context)
            if predictor.websocket is None:
                await abort_rich(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    MODEL_METHOD_NOT_IMPLEMENTED,
                    "the model does not implement `websocket`",
                )
            metadata = [(key, value) for key, value in context.invocation_metadata() or () if isinstance(value, str)]
            await websocket.serve(predictor.websocket, aiter(requests), context.write, metadata, self._log)

    async def GetMetrics(
        self, request: pb.GetMetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMetricsResponse:
        return pb.GetMetricsResponse(text=METRICS.text())

    async def Reload(self, request: pb.ReloadRequest, context: grpc.aio.ServicerContext) -> pb.ReloadResponse:
        with self._tracked():
            package_dir = await self._stored_package(request, context)
            reloader = self._reloader
            if self._refusing or reloader is None:
                await abort(context, grpc.StatusCode.UNAVAILABLE, "replica is not serving a model")
            outcome = await reloader.reload(package_dir)
            return pb.ReloadResponse(
                ok=outcome.ok, error=outcome.error, traceback=outcome.traceback, seconds=outcome.seconds
            )

    async def _stored_package(self, request: pb.ReloadRequest, context: grpc.aio.ServicerContext) -> pathlib.Path:
        """The directory of the stored package a Reload names, or the call is refused."""
        if self._reload_root is None:
            await abort_with(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "RELOAD_NOT_DEVELOPMENT",
                "this replica serves a published deployment: only development replicas live-reload",
            )
        if request.package_dir:
            await abort_with(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "RELOAD_PATH_REFUSED",
                "package_dir is not accepted: a replica reloads only stored packages, named by package_digest",
            )
        if not PACKAGE_DIGEST.fullmatch(request.package_digest):
            await abort_with(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "RELOAD_DIGEST_INVALID",
                "package_digest must be the sha256 of a stored package (64 lowercase hex digits)",
            )
        directory = (self._reload_root / request.package_digest).resolve()
        if directory.parent != self._reload_root or not directory.is_dir():
            await abort_with(
                context,
                grpc.StatusCode.NOT_FOUND,
                "RELOAD_PACKAGE_NOT_FOUND",
                f"no stored package {request.package_digest} under this replica's packages root",
            )
        return directory

    @contextlib.contextmanager
    def _tracked(self, context: grpc.aio.ServicerContext | None = None) -> Iterator[None]:
        """Counts the call in flight; with `context`, the request ID the gateway sent
        (x-slipway-request-id) stamps every log line written while the call runs."""
        self._in_flight += 1
        self._idle.clear()
        token = REQUEST_ID.set(_request_id(context)) if context is not None else None
        try:
            yield
        finally:
            if token is not None:
                REQUEST_ID.reset(token)
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _require_predictor(self, context: grpc.aio.ServicerContext) -> Predictor:
        if self._refusing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replica is shutting down")
        if self._predictor is None:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "model is not loaded yet")
        return self._predictor

    async def _join(self, stream: ChunkStream, context: grpc.aio.ServicerContext) -> tuple[bytes, str]:
        """A streaming model's chunks as one answer (a unary call), within the size limit."""
        encoded, size = [], 0
        async for data, content_type in stream:
            size += len(data)
            await self._check_answer(size, "the model's stream joined into one response (so far)", context)
            encoded.append((data, content_type))
        return codec.join_chunks(encoded)

    async def _check_answer(self, size: int, what: str, context: grpc.aio.ServicerContext) -> None:
        if size > self._max_bytes:
            await self._abort_too_large(context, limits.RESPONSE_TOO_LARGE, what, size)

    async def _abort_too_large(self, context: grpc.aio.ServicerContext, reason: str, what: str, size: int) -> NoReturn:
        message = limits.too_large(what, size, self._max_bytes)
        if reason == limits.RESPONSE_TOO_LARGE:
            self._log.error("response_too_large", error=message)
        await context.abort_with_status(rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message))
        raise AssertionError("unreachable: context.abort_with_status raises")

    async def _decode(self, request: pb.InvokeRequest | pb.InvokeStreamRequest, context: grpc.aio.ServicerContext):
        if len(request.payload) > self._max_bytes:
            await self._abort_too_large(context, limits.REQUEST_TOO_LARGE, "the request body", len(request.payload))
        try:
            return codec.decode_payload(request.payload, request.content_type)
        except codec.PayloadError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _abort_model_call(self, context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
        if isinstance(exc, MethodNotImplemented):
            await abort_rich(context, grpc.StatusCode.NOT_FOUND, MODEL_METHOD_NOT_IMPLEMENTED, str(exc))
        if isinstance(exc, StreamStalled):
            self._log.error("stream_stalled", error=str(exc))
            await abort_rich(context, grpc.StatusCode.DEADLINE_EXCEEDED, STREAM_STALLED, str(exc))
        if isinstance(exc, typed.InputValidationError):
            status = rich_status(grpc.StatusCode.INVALID_ARGUMENT, typed.INPUT_VALIDATION_FAILED, str(exc))
            await context.abort_with_status(status)
        cause = exc.cause if isinstance(exc, ModelError) else exc
        answered = typed.http_exception(cause)
        if answered is not None:  # the model chose its answer: passed on as that status, as in Truss
            http_status, detail, detail_is_json = answered
            self._log.info("predict_http_error", status=http_status, detail=detail)
            metadata = {"http_status": str(http_status), "detail_is_json": "true" if detail_is_json else "false"}
            status = rich_status(typed.grpc_code(http_status), typed.MODEL_HTTP_ERROR, detail, metadata)
            await context.abort_with_status(status)
        self._log.error(
            "predict_failed",
            error=str(exc),
            traceback="".join(traceback.format_exception(cause)),
        )
        await abort(context, grpc.StatusCode.INTERNAL, str(exc))


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == request_ids.METADATA_KEY and isinstance(value, str) and request_ids.is_valid(value):
            return value
    return ""


def _call_state(request: pb.InvokeRequest | pb.InvokeStreamRequest, context: grpc.aio.ServicerContext) -> CallState:
    """What a model method asking for Truss's `request` sees; disconnected once the call is
    over (a call still running when it ends was cancelled by its client)."""
    metadata = [(key, value) for key, value in context.invocation_metadata() or () if isinstance(value, str)]
    call = CallState(request.payload, [("content-type", request.content_type), *metadata])
    context.add_done_callback(lambda _: call.disconnected.set())
    return call


async def abort_rich(context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str, message: str) -> NoReturn:
    await context.abort_with_status(rich_status(code, reason, message))
    raise AssertionError("unreachable: context.abort_with_status raises")


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """context.abort, typed: it always raises."""
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


async def abort_with(context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str, message: str) -> NoReturn:
    """Abort with an ErrorInfo reason."""
    await context.abort_with_status(rich_status(code, reason, message))
    raise AssertionError("unreachable: context.abort_with_status raises")
