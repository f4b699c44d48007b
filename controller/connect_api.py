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
import base64
import binascii
import contextlib
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from aiohttp import web
from google.protobuf import any_pb2, descriptor, descriptor_pool, json_format, message_factory, symbol_database
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from slipway.status import ERROR_DOMAIN

# Connect's names and HTTP statuses of the gRPC codes (connectrpc.com/docs/protocol#error-codes).
CONNECT_CODES: dict[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.CANCELLED: ("canceled", 499),
    grpc.StatusCode.UNKNOWN: ("unknown", 500),
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_argument", 400),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    grpc.StatusCode.NOT_FOUND: ("not_found", 404),
    grpc.StatusCode.ALREADY_EXISTS: ("already_exists", 409),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_denied", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    grpc.StatusCode.FAILED_PRECONDITION: ("failed_precondition", 400),
    grpc.StatusCode.ABORTED: ("aborted", 409),
    grpc.StatusCode.OUT_OF_RANGE: ("out_of_range", 400),
    grpc.StatusCode.UNIMPLEMENTED: ("unimplemented", 501),
    grpc.StatusCode.INTERNAL: ("internal", 500),
    grpc.StatusCode.UNAVAILABLE: ("unavailable", 503),
    grpc.StatusCode.DATA_LOSS: ("data_loss", 500),
    grpc.StatusCode.UNAUTHENTICATED: ("unauthenticated", 401),
}

UNARY_CODECS = {"application/json": "json", "application/proto": "proto"}
# How often a server stream checks that its client is still connected.
STREAM_GONE_POLL = 0.5
STREAM_CODECS = {"application/connect+json": "json", "application/connect+proto": "proto"}
END_STREAM_FLAG = 0x02
COMPRESSED_FLAG = 0x01
ENVELOPE = struct.Struct(">BI")
# Request headers that describe the HTTP exchange or Connect's framing, not call metadata.
NOT_METADATA = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-type",
        "content-length",
        "content-encoding",
        "accept",
        "accept-encoding",
        "accept-language",
        "user-agent",
        "origin",
        "referer",
        "cookie",
        "expect",
    }
)
URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")  # binary headers: either base64 alphabet, padded or not
METADATA_KEY = re.compile(r"[0-9a-z_.-]+")
MAX_TIMEOUT_DIGITS = 10  # Connect-Timeout-Ms: at most 10 digits


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


class ConnectError(Exception):
    """A call refused before it reaches the gRPC server."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = [error_info(reason)]
        # Set for refusals of the HTTP request itself (no such route, wrong verb or content
        # type), answered with that status even for a streaming method.
        self.http_status = http_status


def error_info(reason: str) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    return detail


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


def check_protocol_headers(request: web.Request) -> None:
    version = request.headers.get("Connect-Protocol-Version")
    if version is not None and version != "1":
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNSUPPORTED_PROTOCOL_VERSION",
            f"Connect-Protocol-Version {version!r} is not supported; send 1",
        )
    # aiohttp decodes gzip and deflate bodies as it reads them (and refuses brotli unless
    # installed); read_body's limit counts the decoded bytes.
    encoding = request.headers.get("Content-Encoding", "identity")
    if encoding not in ("identity", "gzip", "deflate"):
        raise ConnectError(
            grpc.StatusCode.UNIMPLEMENTED,
            "UNSUPPORTED_ENCODING",
            f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate",
        )


def timeout_of(request: web.Request) -> float | None:
    value = request.headers.get("Connect-Timeout-Ms")
    if value is None:
        return None
    if not value.isdigit() or len(value) > MAX_TIMEOUT_DIGITS:
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_TIMEOUT",
            f"Connect-Timeout-Ms must be a positive integer of at most {MAX_TIMEOUT_DIGITS} digits",
        )
    return int(value) / 1000


async def read_body(request: web.Request, limit: int) -> bytes:
    too_large = ConnectError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
        f"the request body is larger than the controller's limit of {limit} bytes",
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks = []
    size = 0
    while chunk := await request.content.read(1024 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def unwrap_envelope(body: bytes) -> bytes:
    if len(body) < ENVELOPE.size:
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_ENVELOPE", "a streaming request is one enveloped message"
        )
    flags, length = ENVELOPE.unpack_from(body)
    if flags not in (0, COMPRESSED_FLAG) or length != len(body) - ENVELOPE.size:
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_ENVELOPE",
            f"the envelope declares flags {flags} and {length} bytes; the body holds one message of "
            f"{len(body) - ENVELOPE.size} bytes with flags 0",
        )
    if flags == COMPRESSED_FLAG:
        raise ConnectError(
            grpc.StatusCode.UNIMPLEMENTED, "UNSUPPORTED_ENCODING", "compressed messages are not supported"
        )
    return body[ENVELOPE.size :]


def envelope(flags: int, payload: bytes) -> bytes:
    return ENVELOPE.pack(flags, len(payload)) + payload


def decode(cls: type[Message], body: bytes, codec: str) -> Message:
    message = cls()
    try:
        if codec == "json":
            json_format.Parse(body.decode() or "{}", message)
        else:
            message.ParseFromString(body)
    except (json_format.ParseError, DecodeError, ValueError, RecursionError) as error:
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
            f"the body is not a valid {cls.DESCRIPTOR.full_name} in {codec.upper()}: {str(error)[:500]}",
        ) from None
    return message


def encode(message: Message, codec: str) -> bytes:
    if codec == "json":
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()


def metadata_of(request: web.Request) -> tuple[tuple[str, str | bytes], ...]:
    """The call's metadata: every request header that is not about HTTP or Connect itself
    (so `Authorization` arrives as `authorization`, exactly as a gRPC client sends it)."""
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in request.headers.items():
        key = name.lower()
        if key in NOT_METADATA or key.startswith(("connect-", "grpc-", ":")):
            continue
        if not METADATA_KEY.fullmatch(key):
            raise ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "MALFORMED_HEADER",
                f"header {name!r} cannot travel as gRPC metadata: names are made of 0-9 a-z - _ .",
            )
        if key.endswith("-bin"):
            try:
                padded = value.translate(URL_SAFE_TO_STANDARD) + "=" * (-len(value) % 4)
                metadata.append((key, base64.b64decode(padded, validate=True)))
            except (binascii.Error, ValueError):
                raise ConnectError(
                    grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_HEADER", f"header {name} is not base64"
                ) from None
        elif value.isascii() and value.isprintable():
            metadata.append((key, value))
        else:
            raise ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_HEADER", f"header {name} is not printable ASCII"
            )
    return tuple(metadata)


def status_of(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[any_pb2.Any]]:
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the code: keep the code
        status = None
    details = list(status.details) if status is not None else []
    return error.code(), error.details() or "", details


def error_json(code: grpc.StatusCode, message: str, details: Iterable[any_pb2.Any]) -> dict:
    body: dict = {"code": CONNECT_CODES.get(code, ("unknown", 500))[0]}
    if message:
        body["message"] = message
    rendered = [detail_json(detail) for detail in details]
    if rendered:
        body["details"] = rendered
    return body


def detail_json(detail: any_pb2.Any) -> dict:
    type_name = detail.type_url.rpartition("/")[2]
    rendered: dict = {"type": type_name, "value": base64.b64encode(detail.value).decode().rstrip("=")}
    try:
        cls = symbol_database.Default().GetSymbol(type_name)
        rendered["debug"] = json_format.MessageToDict(cls.FromString(detail.value))
    except (KeyError, DecodeError):
        pass  # a type this controller does not know: the client still has type and value
    return rendered


def unary_error(
    code: grpc.StatusCode,
    message: str,
    details: Iterable[any_pb2.Any],
    http_status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=http_status or CONNECT_CODES.get(code, ("unknown", 500))[1],
        body=json.dumps(error_json(code, message, details)).encode(),
        content_type="application/json",
        headers=headers,
    )


def stream_error(code: grpc.StatusCode, message: str, details: Iterable[any_pb2.Any]) -> dict:
    return {"error": error_json(code, message, details)}


def _header_items(metadata) -> Iterable[tuple[str, str]]:
    for key, value in metadata or ():
        if key.startswith("grpc-"):  # the status travels in the body, as Connect carries it
            continue
        yield key, base64.b64encode(value).decode().rstrip("=") if isinstance(value, bytes) else value


def headers_of(metadata) -> dict[str, str]:
    return dict(_header_items(metadata))


def trailer_headers(metadata) -> dict[str, str]:
    return {f"trailer-{key}": value for key, value in _header_items(metadata)}


def metadata_json(metadata) -> dict[str, list[str]]:
    rendered: dict[str, list[str]] = {}
    for key, value in _header_items(metadata):
        rendered.setdefault(key, []).append(value)
    return rendered
