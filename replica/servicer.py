"""ReplicaService: decodes requests, runs the predictor, maps failures to status codes.

A request body, and each answer (a response, or one chunk of a stream), is at most
`max_request_bytes`; beyond it the call is refused with RESOURCE_EXHAUSTED and the
ErrorInfo reason REQUEST_TOO_LARGE or RESPONSE_TOO_LARGE.

Reload is for development replicas only (FAILED_PRECONDITION RELOAD_NOT_DEVELOPMENT
elsewhere) and loads a package the controller stored, named by its digest and found
under the packages root the replica was started with: never a path a caller names."""

from __future__ import annotations

import json
import pathlib
import re
from typing import NoReturn

import grpc

from replica import codec, websocket
from replica.calls import MODEL_METHOD_NOT_IMPLEMENTED, STREAM_STALLED, ModelCalls, Refusal
from replica.log import Logger
from replica.metrics import METRICS
from replica.model_request import CallState
from replica.predictor import Predictor
from replica.reload import ModelReloader
from slipway import limits, request_ids, tracing
from slipway.status import rich_status
from slipway.v1 import replica_service_pb2 as pb
from slipway.v1 import replica_service_pb2_grpc as pb_grpc

__all__ = ["MODEL_METHOD_NOT_IMPLEMENTED", "STREAM_STALLED", "ReplicaServicer"]
# InvokeRequest.method asking for the model's Truss schema rather than calling it.
SCHEMA = "schema"
NO_SCHEMA = "NO_SCHEMA"
PACKAGE_DIGEST = re.compile(r"[0-9a-f]{64}")
INVOKE_SPAN, INVOKE_STREAM_SPAN = "slipway.v1.ReplicaService/Invoke", "slipway.v1.ReplicaService/InvokeStream"


class ReplicaServicer(pb_grpc.ReplicaServiceServicer):
    def __init__(
        self,
        log: Logger,
        max_request_bytes: int = limits.DEFAULT_MAX_REQUEST_BYTES,
        reload_root: pathlib.Path | None = None,
        calls: ModelCalls | None = None,
    ) -> None:
        self._log = log
        # Shared with the replica's direct fronts (replica/direct.py).
        self.calls = calls or ModelCalls(log, max_request_bytes)
        # The controller's packages root on a development replica; None: Reload is refused.
        self._reload_root = reload_root
        self._reloader: ModelReloader | None = None

    @property
    def predictor(self) -> Predictor | None:
        return self.calls.predictor

    def attach(self, predictor: Predictor) -> None:
        """Start serving predictions; until then every call is UNAVAILABLE."""
        self.calls.predictor = predictor

    def enable_reload(self, reloader: ModelReloader) -> None:
        """Accept Reload calls (once the first model is loaded)."""
        self._reloader = reloader

    def refuse_new_calls(self) -> None:
        """Drain: calls already running finish, new ones get UNAVAILABLE."""
        self.calls.refusing = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no predict call is in flight; False if `timeout` passed first."""
        return await self.calls.wait_idle(timeout)

    async def Invoke(self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext) -> pb.InvokeResponse:
        with self.calls.tracked(_request_id(context)), tracing.grpc_server_span(INVOKE_SPAN, context):
            try:
                if request.method == SCHEMA:
                    schema = self.calls.require_predictor().schema
                    if schema is None:
                        raise Refusal(grpc.StatusCode.NOT_FOUND, "No schema found", NO_SCHEMA)
                    return pb.InvokeResponse(payload=json.dumps(schema).encode(), content_type=codec.JSON)
                return await self.calls.invoke(request, lambda: _call_state(request, context))
            except Refusal as refusal:
                await refusal.abort(context)

    async def InvokeStream(self, request: pb.InvokeStreamRequest, context: grpc.aio.ServicerContext) -> None:
        """A model error mid-stream ends the call with INTERNAL after the chunks already sent
        (the HTTP front then ends its response cleanly, as Truss does)."""
        with self.calls.tracked(_request_id(context)), tracing.grpc_server_span(INVOKE_STREAM_SPAN, context):
            try:
                async for chunk in self.calls.invoke_stream(request, lambda: _call_state(request, context)):
                    await context.write(chunk)
            except Refusal as refusal:
                await refusal.abort(context)

    async def InvokeWebsocket(self, requests, context: grpc.aio.ServicerContext) -> None:
        with self.calls.tracked(_request_id(context)):
            try:
                predictor = self.calls.require_predictor()
            except Refusal as refusal:
                await refusal.abort(context)
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
        with self.calls.tracked():
            package_dir = await self._stored_package(request, context)
            reloader = self._reloader
            if self.calls.refusing or reloader is None:
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
