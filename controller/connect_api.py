"""JSON over HTTP for the management API: the Connect protocol (unary and server-streaming
calls, JSON or binary protobuf), driven by the proto descriptors of the services the
controller's gRPC server registers, not written per method.

Each call is forwarded to the controller's own gRPC server over a local channel (as
grpc-gateway does), so every interceptor (authentication, request validation) and every
status applies unchanged; the gRPC status and its details come back as Connect's error
JSON (code, message, details with type, value and debug).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from aiohttp import web
from google.protobuf import descriptor, descriptor_pool, message_factory
from google.protobuf.message import Message

from controller.connect_protocol import (
    END_STREAM_FLAG,
    STREAM_CODECS,
    UNARY_CODECS,
    ConnectError,
    check_protocol_headers,
    decode,
    encode,
    envelope,
    error_info,
    headers_of,
    metadata_json,
    metadata_of,
    read_body,
    status_of,
    stream_error,
    timeout_of,
    trailer_headers,
    unary_error,
    unwrap_envelope,
)

# How often a server stream checks that its client is still connected.
STREAM_GONE_POLL = 0.5


@dataclass(frozen=True)
class ConnectLimits:
    """What one Connect client may ask of the controller (ControllerSettings.connect)."""

    # A JSON body carries a package archive in base64 (4/3 of the gRPC message limit).
    max_request_bytes: int = 344 * 1024 * 1024
    max_stream_seconds: float = 3600.0
    max_stream_messages: int = 100_000
    max_concurrent_streams: int = 100


@dataclass(frozen=True)
class Method:
    path: str  # /package.Service/Method, as gRPC names it
    input: type[Message]
    output: type[Message]
    server_streaming: bool


def methods_of(service_names: Iterable[str]) -> dict[str, Method]:
    """The unary and server-streaming methods of the named services (client streams need
    HTTP/2 end to end, which a browser or curl over HTTP/1.1 does not have)."""
    pool = descriptor_pool.Default()
    methods = {}
    for service_name in service_names:
        for method in pool.FindServiceByName(service_name).methods:
            if method.client_streaming:
                continue
            path = f"/{service_name}/{method.name}"
            methods[path] = Method(
                path,
                message_factory.GetMessageClass(method.input_type),
                message_factory.GetMessageClass(method.output_type),
                method.server_streaming,
            )
    return methods


def services_of(service_names: Iterable[str]) -> list[descriptor.ServiceDescriptor]:
    pool = descriptor_pool.Default()
    return [pool.FindServiceByName(name) for name in service_names]


class ConnectApi:
    """The Connect routes of the controller's HTTP app, forwarding to `channel`."""

    def __init__(self, channel: grpc.aio.Channel, service_names: Iterable[str], limits: ConnectLimits) -> None:
        self.channel = channel
        self.limits = limits
        self.methods = methods_of(service_names)
        self._streams: set[grpc.aio.Call] = set()
        self._closing = False

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{service}/{method}", self.handle)
        app.on_shutdown.append(self._end_streams)

    async def _end_streams(self, _app: web.Application) -> None:
        """At shutdown, end open streams with UNAVAILABLE rather than hold the shutdown."""
        self._closing = True
        for call in list(self._streams):
            call.cancel()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = self.methods.get(request.path)
        try:
            if method is None:
                raise ConnectError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "UNKNOWN_METHOD",
                    f"no method {request.path}: call POST /slipway.v1.<Service>/<Method> (see /openapi.json)",
                    http_status=404,
                )
            if request.method != "POST":
                raise ConnectError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "METHOD_NOT_ALLOWED",
                    f"{request.path} is called with POST, not {request.method}",
                    http_status=405,
                )
            codecs = STREAM_CODECS if method.server_streaming else UNARY_CODECS
            codec = codecs.get(request.content_type)
            if codec is None:
                raise ConnectError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "UNSUPPORTED_CONTENT_TYPE",
                    f"{request.path} takes Content-Type {' or '.join(codecs)}, not {request.content_type!r}",
                    http_status=415,
                )
            check_protocol_headers(request)
            timeout = timeout_of(request)
            body = await read_body(request, self.limits.max_request_bytes)
            if method.server_streaming:
                body = unwrap_envelope(body)
            message = decode(method.input, body, codec)
            metadata = metadata_of(request)
        except ConnectError as error:
            if method is not None and method.server_streaming and error.http_status is None:
                return await self._stream_refusal(request, error)
            return unary_error(error.code, error.message, error.details, http_status=error.http_status)
        if method.server_streaming:
            return await self._stream(request, method, message, codec, metadata, timeout)
        return await self._unary(method, message, codec, metadata, timeout)

    async def _unary(self, method, message, codec, metadata, timeout) -> web.Response:
        call = self.channel.unary_unary(
            method.path,
            request_serializer=method.input.SerializeToString,
            response_deserializer=method.output.FromString,
        )(message, metadata=metadata, timeout=timeout)
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            code, text, details = status_of(error)
            headers = headers_of(error.initial_metadata()) | trailer_headers(error.trailing_metadata())
            return unary_error(code, text, details, headers=headers)
        headers = headers_of(await call.initial_metadata()) | trailer_headers(await call.trailing_metadata())
        content_type = "application/json" if codec == "json" else "application/proto"
        return web.Response(body=encode(response, codec), content_type=content_type, headers=headers)

    async def _stream(self, request, method, message, codec, metadata, timeout) -> web.StreamResponse:
        if len(self._streams) >= self.limits.max_concurrent_streams:
            error = ConnectError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_STREAMS",
                f"the controller serves at most {self.limits.max_concurrent_streams} streams at once; retry later",
            )
            return await self._stream_refusal(request, error)
        limit = self.limits.max_stream_seconds
        call = self.channel.unary_stream(
            method.path,
            request_serializer=method.input.SerializeToString,
            response_deserializer=method.output.FromString,
        )(message, metadata=metadata, timeout=limit if timeout is None else min(timeout, limit))
        self._streams.add(call)
        response = web.StreamResponse(headers={"Content-Type": f"application/connect+{codec}"})
        end: dict = {}
        watch: asyncio.Task | None = None
        try:
            # Headers go out at once, not with the first message: a watch may have nothing to
            # say for a long time, and a client waits for the headers before it goes on.
            await response.prepare(request)
            watch = asyncio.create_task(_cancel_when_gone(request, call))
            sent = 0
            async for item in call:
                if sent == self.limits.max_stream_messages:
                    call.cancel()
                    end = stream_error(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"a stream carries at most {self.limits.max_stream_messages} messages; call again to go on",
                        [error_info("STREAM_MESSAGE_LIMIT")],
                    )
                    break
                await response.write(envelope(0, encode(item, codec)))
                sent += 1
            else:
                trailers = metadata_json(await call.trailing_metadata())
                end = {"metadata": trailers} if trailers else {}
        except grpc.aio.AioRpcError as error:
            end = stream_error(*status_of(error))
            if trailers := metadata_json(error.trailing_metadata()):
                end["metadata"] = trailers
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            if watch is not None and watch.done():  # the client left: nobody to tell
                return response
            if not self._closing:
                raise
            end = stream_error(
                grpc.StatusCode.UNAVAILABLE,
                "the controller is shutting down; call again",
                [error_info("CONTROLLER_SHUTTING_DOWN")],
            )
        except ConnectionResetError:  # the client left
            call.cancel()
            return response
        finally:
            self._streams.discard(call)
            if watch is not None:
                watch.cancel()
        with contextlib.suppress(ConnectionResetError):
            await response.write(envelope(END_STREAM_FLAG, json.dumps(end).encode()))
            await response.write_eof()
        return response

    async def _stream_refusal(self, request: web.Request, error: ConnectError) -> web.StreamResponse:
        """A refused stream: HTTP 200 and the error in the end-of-stream message, as Connect frames them."""
        codec = STREAM_CODECS.get(request.content_type, "json")
        response = web.StreamResponse(headers={"Content-Type": f"application/connect+{codec}"})
        await response.prepare(request)
        end = stream_error(error.code, error.message, error.details)
        await response.write(envelope(END_STREAM_FLAG, json.dumps(end).encode()))
        await response.write_eof()
        return response


async def _cancel_when_gone(request: web.Request, call: grpc.aio.UnaryStreamCall) -> None:
    """Ends the call when its client left. A quiet stream (a tail or a watch with nothing new)
    writes nothing, so a write would never find out; aiohttp drops the transport when the
    connection closes, which is checked every STREAM_GONE_POLL seconds."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(STREAM_GONE_POLL)
    call.cancel()
