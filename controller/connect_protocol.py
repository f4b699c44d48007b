"""The Connect protocol's wire format (connectrpc.com/docs/protocol): its error codes and
error JSON, envelopes of streamed messages, JSON/binary codecs, timeouts and the HTTP
headers that carry call metadata. controller/connect_api.py serves calls with it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Iterable

import grpc
from aiohttp import web
from google.protobuf import any_pb2, json_format, symbol_database
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
