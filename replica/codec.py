"""Turning request payloads into model input and model output into response bytes.

A returned value is one JSON document (bytes pass raw), or MessagePack when the request
was MessagePack (Truss's binary bodies). A yielded chunk is labelled
with the type of the stream it belongs to: a JSON value is one line of
application/x-ndjson, a str is text/plain (UTF-8), bytes are application/octet-stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
NDJSON = "application/x-ndjson"
MSGPACK = "application/x-msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/msgpack", "application/vnd.msgpack"})


class PayloadError(ValueError):
    """The request payload cannot be decoded; the client's fault."""


class ResultEncodingError(TypeError):
    """The model's output cannot be encoded; the model's fault."""


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    return _media_type(content_type) in ("", JSON)


def is_msgpack(content_type: str) -> bool:
    return _media_type(content_type) in MSGPACK_TYPES


def decode_payload(payload: bytes, content_type: str) -> Any:
    """JSON (or no content type) and MessagePack are parsed; any other content type passes raw bytes."""
    if is_msgpack(content_type):
        import msgpack  # only some models take MessagePack: keep it off the replica's start

        try:
            return msgpack.unpackb(payload, raw=False)
        except Exception as exc:  # FormatError, ExtraData, unhashable map keys, ...: all the caller's
            raise PayloadError(f"request body is not valid MessagePack: {exc}") from None
    if not is_json(content_type):
        return payload
    try:
        return json.loads(payload)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise PayloadError(f"request body is not valid JSON: {exc}") from None


def encode_result(result: Any, request_content_type: str = "") -> tuple[bytes, str]:
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result), OCTET_STREAM
    if is_msgpack(request_content_type):
        import msgpack

        try:
            return msgpack.packb(result, default=_to_json), MSGPACK
        except (TypeError, ValueError) as exc:
            raise ResultEncodingError(f"model output cannot be encoded as MessagePack: {exc}") from None
    return _dumps(result), JSON


def encode_chunk(chunk: Any) -> tuple[bytes, str]:
    if isinstance(chunk, str):
        return chunk.encode("utf-8"), TEXT
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk), OCTET_STREAM
    return _dumps(chunk) + b"\n", NDJSON


def join_chunks(encoded: Iterable[tuple[bytes, str]]) -> tuple[bytes, str]:
    """One payload for a unary call whose model streamed."""
    parts, content_types = [], set()
    for data, content_type in encoded:
        parts.append(data)
        content_types.add(content_type)
    content_type = content_types.pop() if len(content_types) == 1 else OCTET_STREAM
    return b"".join(parts), content_type


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, default=_to_json, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ResultEncodingError(f"model output is not JSON-serialisable: {exc}") from None


def _to_json(value: Any) -> Any:
    """Common model output types that json does not know: numpy arrays, pydantic models."""
    for method in ("tolist", "model_dump"):
        convert = getattr(value, method, None)
        if callable(convert):
            return convert()
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
