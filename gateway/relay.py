"""A model's answer over HTTP, from the chunks of an InvokeStream: the one place its
semantics live, shared by the gateway's HTTP front (gateway/http_api.py, chunks from a
replica over gRPC) and a replica's own HTTP predict route (replica/direct.py, chunks from
its model in the same process).

The body is the model's output as it left the replica, streamed in chunks when the model
yields (labelled by its first chunk: application/x-ndjson for JSON values, text/plain for
text, application/octet-stream for bytes). A caller that accepts only application/json
gets a streaming model's chunks gathered into one JSON answer, as Truss does. Every error
is gateway/errors.py's JSON body with its status. A model error after the stream started
ends the response cleanly (the error is in the replica's log), as Truss does; any other
failure mid-stream (a stalled model, a lost replica) cuts the body short, so the client
can tell the stream broke."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

import grpc
from aiohttp import web

from gateway.errors import MODEL_FAILURES, GatewayError, response_too_large
from slipway.v1 import replica_service_pb2 as rs

log = logging.getLogger("slipway.gateway.http")
DEFAULT_CONTENT_TYPE = "application/json"
NDJSON = "application/x-ndjson"
# What curl and HTML forms send when the caller names no type: the body is meant as JSON.
UNTYPED = ("", "application/x-www-form-urlencoded")
# The chunks of one answer; raising GatewayError when the call fails (before or after a chunk).
Chunks = AsyncGenerator[rs.InvokeStreamResponse, None]


class StreamObserver(Protocol):
    """What the relay tells about a streamed answer (gateway/metrics.py's Observation)."""

    def streamed(self) -> None: ...

    def failed_mid_stream(self, http_status: int) -> None: ...


class Unobserved:
    def streamed(self) -> None:
        pass

    def failed_mid_stream(self, http_status: int) -> None:
        pass


def invoke_request(request: web.Request, payload: bytes, method: str = "") -> rs.InvokeStreamRequest:
    """The InvokeStream an HTTP request makes (an untyped body is JSON)."""
    content_type = request.headers.get("Content-Type", "")
    return rs.InvokeStreamRequest(
        payload=payload,
        content_type=DEFAULT_CONTENT_TYPE if content_type in UNTYPED else content_type,
        method=method,
    )


async def parsed(raw: AsyncIterator[bytes]) -> Chunks:
    """Raw InvokeStreamResponse bytes as messages; closing this closes `raw`."""
    async with contextlib.aclosing(raw) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            yield rs.InvokeStreamResponse.FromString(chunk)


async def relay_chunks(
    request: web.Request, chunks: Chunks, max_bytes: int, observer: StreamObserver
) -> web.StreamResponse:
    """The HTTP answer to `request` made of `chunks` (`max_bytes`: the largest stream
    gathered for Accept: application/json)."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        return web.Response(body=b"", headers={"Content-Type": DEFAULT_CONTENT_TYPE})
    except GatewayError as error:
        return error_response(error)
    if first.complete:
        await chunks.aclose()
        return web.Response(body=first.chunk, headers={"Content-Type": first.content_type or DEFAULT_CONTENT_TYPE})
    if accepts_only_json(request):
        try:
            body = await gather_json(first, chunks, max_bytes)
        except GatewayError as error:
            return error_response(error)
        return web.Response(body=body, headers={"Content-Type": DEFAULT_CONTENT_TYPE})
    response = web.StreamResponse(headers={"Content-Type": first.content_type or "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(first.chunk)
    observer.streamed()
    try:
        async for message in chunks:
            await response.write(message.chunk)
    except GatewayError as error:
        observer.failed_mid_stream(error.http_status)
        if error.reason not in MODEL_FAILURES:
            # The status line is gone; ending the body without its last chunk tells the client it broke.
            if request.transport is not None:
                request.transport.close()
            return response
        log.warning("model_error_mid_stream", extra={"fields": {"error": error.message}})
    await response.write_eof()
    return response


def error_response(error: GatewayError) -> web.Response:
    return web.json_response(error.to_json(), status=error.http_status)


def accepts_only_json(request: web.Request) -> bool:
    """The caller accepts application/json and nothing else: Truss's test before it gathers a
    stream. As in Truss, an OpenAI client keeps its stream (its SDK sends that header always)."""
    ranges = [r for header in request.headers.getall("Accept", ()) for r in header.split(",") if r.strip()]
    return (
        len(ranges) == 1
        and _media_type(ranges[0]) == DEFAULT_CONTENT_TYPE
        and "openai" not in request.headers.get("User-Agent", "").lower()
    )


async def gather_json(first: rs.InvokeStreamResponse, rest: Chunks, limit: int) -> bytes:
    """A streaming model's chunks as one JSON document: JSON values become an array, text a
    string (Truss joins the chunks as text). Bytes that are not text have no JSON form."""
    parts, kinds, size = [first.chunk], {_media_type(first.content_type)}, len(first.chunk)
    try:
        async for message in rest:
            size += len(message.chunk)
            if size > limit:
                raise response_too_large(size, limit, "the stream gathered for Accept: application/json (so far)")
            parts.append(message.chunk)
            kinds.add(_media_type(message.content_type))
    finally:
        await rest.aclose()
    if kinds == {NDJSON}:
        return b"[" + b",".join(part.rstrip(b"\n") for part in parts) + b"]"
    try:
        text = b"".join(parts).decode("utf-8")
    except UnicodeDecodeError:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "NOT_ACCEPTABLE",
            "the model streams binary data, which has no JSON form: call it without Accept: application/json",
        ) from None
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


# aiohttp's own refusals (unknown path, wrong method), in the gateway's JSON error shape.
@web.middleware
async def json_http_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            error = ("NOT_FOUND", "NO_SUCH_ROUTE", f"no route {request.method} {request.path}")
        elif exc.status == 405:
            error = ("UNIMPLEMENTED", "METHOD_NOT_ALLOWED", f"{request.path} accepts only {exc.headers['Allow']}")
        else:
            raise
        body = {"error": dict(zip(("code", "reason", "message"), error, strict=False))}
        return web.json_response(
            body, status=exc.status, headers={k: v for k, v in exc.headers.items() if k == "Allow"}
        )


# How long a connection closed mid-body stays open after its answer, the client's bytes
# still read and dropped. Closed at once with unread bytes in its buffer, the kernel
# would reset it, and a reset can discard the answer before the client reads it.
LINGER_SECONDS = 1.0


async def stalled_body_response(request: web.Request, error: GatewayError) -> web.StreamResponse:
    """The client stopped sending its body: answer, and close rather than wait for the rest."""
    response = error_response(error)
    await response.prepare(request)
    await response.write_eof()
    close_lingering(request)
    return response


def close_lingering(request: web.Request) -> None:
    """End a connection whose body will not be read: the answer, then FIN, then close."""
    transport = request.transport
    if transport is None or not transport.can_write_eof():
        request.protocol.force_close()
        return
    transport.write_eof()
    asyncio.get_running_loop().call_later(LINGER_SECONDS, request.protocol.force_close)
