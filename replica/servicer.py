"""ReplicaService: decodes requests, runs the predictor, maps failures to status codes."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import traceback
from collections.abc import Iterator
from typing import NoReturn

import grpc

from replica import codec
from replica.log import Logger
from replica.predictor import ChunkStream, ModelError, Predictor
from replica.reload import ModelReloader
from slipway.process import wait_event
from slipway.v1 import replica_service_pb2 as pb
from slipway.v1 import replica_service_pb2_grpc as pb_grpc


class ReplicaServicer(pb_grpc.ReplicaServiceServicer):
    def __init__(self, log: Logger) -> None:
        self._log = log
        self._predictor: Predictor | None = None
        self._reloader: ModelReloader | None = None
        self._refusing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

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
        with self._tracked():
            predictor = await self._require_predictor(context)
            model_input = await self._decode(request, context)
            try:
                async with predictor.run(model_input) as result:
                    if isinstance(result, ChunkStream):
                        payload, content_type = codec.join_chunks([codec.encode_chunk(c) async for c in result])
                    else:
                        payload, content_type = codec.encode_result(result)
            except (ModelError, codec.ResultEncodingError) as exc:
                await self._abort_model_failure(context, exc)
            return pb.InvokeResponse(payload=payload, content_type=content_type)

    async def InvokeStream(self, request: pb.InvokeStreamRequest, context: grpc.aio.ServicerContext) -> None:
        with self._tracked():
            predictor = await self._require_predictor(context)
            model_input = await self._decode(request, context)
            try:
                async with predictor.run(model_input) as result:
                    if isinstance(result, ChunkStream):
                        async for chunk in result:
                            data, content_type = codec.encode_chunk(chunk)
                            await context.write(pb.InvokeStreamResponse(chunk=data, content_type=content_type))
                    else:
                        data, content_type = codec.encode_result(result)
                        await context.write(
                            pb.InvokeStreamResponse(chunk=data, content_type=content_type, complete=True)
                        )
            except (ModelError, codec.ResultEncodingError) as exc:
                await self._abort_model_failure(context, exc)

    async def Reload(self, request: pb.ReloadRequest, context: grpc.aio.ServicerContext) -> pb.ReloadResponse:
        with self._tracked():
            reloader = self._reloader
            if self._refusing or reloader is None:
                await abort(context, grpc.StatusCode.UNAVAILABLE, "replica is not serving a model")
            if not request.package_dir:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "package_dir is required")
            outcome = await reloader.reload(pathlib.Path(request.package_dir))
            return pb.ReloadResponse(
                ok=outcome.ok, error=outcome.error, traceback=outcome.traceback, seconds=outcome.seconds
            )

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _require_predictor(self, context: grpc.aio.ServicerContext) -> Predictor:
        if self._refusing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replica is shutting down")
        if self._predictor is None:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "model is not loaded yet")
        return self._predictor

    async def _decode(self, request: pb.InvokeRequest | pb.InvokeStreamRequest, context: grpc.aio.ServicerContext):
        try:
            return codec.decode_payload(request.payload, request.content_type)
        except codec.PayloadError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _abort_model_failure(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        cause = exc.cause if isinstance(exc, ModelError) else exc
        self._log.error(
            "predict_failed",
            error=str(exc),
            traceback="".join(traceback.format_exception(cause)),
        )
        await context.abort(grpc.StatusCode.INTERNAL, str(exc))


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """context.abort, typed: it always raises."""
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")
