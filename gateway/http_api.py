"""The HTTP front (aiohttp): the same routes as the hosted platforms use.

POST /model/{model_id}/production/predict
POST /model/{model_id}/development/predict
POST /model/{model_id}/environments/{environment}/predict   (staging, ...; production too)
POST /model/{model_id}/deployment/{deployment_id}/predict
and the matching .../wake routes (Truss's other routes: gateway/truss_routes.py). The body is forwarded as it came; the model's
output is returned as it left the replica, streamed in chunks when the model
yields (labelled by its first chunk: application/x-ndjson for JSON values,
text/plain for text, application/octet-stream for bytes). A caller that accepts
only application/json gets a streaming model's chunks gathered into one JSON
answer, as Truss does. Every error is a JSON body {"error": {"code", "reason", "message"}}.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

import grpc
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.errors import MODEL_FAILURES, GatewayError, response_too_large
from gateway.forwarder import Forwarder
from gateway.http_limits import BodyReader, BodyTimeout
from gateway.metrics import HTTP, GatewayMetrics, Observation
from gateway.request_id import assign_request_id, request_id_of
from gateway.request_id import install as stamp_request_ids
from gateway.routing import DEVELOPMENT, PRODUCTION
from gateway.truss_routes import add_truss_routes, schema_answer, websocket_session
from slipway import tracing
from slipway.metrics import METRICS_PATH, exposition
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import route_service_pb2 as rt

log = logging.getLogger("slipway.gateway.http")
DEFAULT_CONTENT_TYPE = "application/json"
NDJSON = "application/x-ndjson"
# What curl and HTML forms send when the caller names no type: the body is meant as JSON.
UNTYPED = ("", "application/x-www-form-urlencoded")
# (model, deployment ID, environment, request ID) → the deployment that takes the request.
Resolver = Callable[[str, str, str, str], rt.DeploymentRoute]


def build_app(
    forwarder: Forwarder,
    resolver: Resolver,
    wake: Callable[[str], Awaitable[dict]],
    timeout: float,
    bodies: BodyReader,
    authenticate: Middleware,
    metrics: GatewayMetrics | None = None,
) -> web.Application:
    def target(request: web.Request) -> Callable[[], rt.DeploymentRoute]:
        model_id = request.match_info["model_id"]
        deployment_id = request.match_info.get("deployment_id", "")
        environment = request.match_info.get("environment", PRODUCTION)
        request_id = request_id_of(request)
        return lambda: resolver(model_id, deployment_id, environment, request_id)

    async def call(request: web.Request, method: str = "") -> web.StreamResponse:
        """Forward the request to model method `method` ("" is predict) and relay its answer;
        the one place an HTTP inference request is observed (gateway/metrics.py)."""
        observation = forwarder.metrics.start(HTTP)
        try:
            with tracing.http_server_span(request, request.match_info["model_id"]):
                response = await forward(request, method, observation)
        except (asyncio.CancelledError, ConnectionError):  # the client went away
            observation.done("499")
            raise
        except BaseException:
            observation.done("500")
            raise
        observation.done(str(response.status))
        return response

    async def forward(request: web.Request, method: str, observation: Observation) -> web.StreamResponse:
        try:
            async with bodies.read(request) as payload:
                return await relay(request, payload, forwarder, target(request), timeout, method, observation)
        except BodyTimeout as error:
            forwarder.metrics.refused(error.reason)
            # The client stopped sending: answer, and close rather than wait for the rest.
            response = error_response(error)
            await response.prepare(request)
            await response.write_eof()
            _close_lingering(request)
            return response
        except GatewayError as error:  # the body was refused (too large)
            forwarder.metrics.refused(error.reason)
            return error_response(error)

    async def websocket(request: web.Request) -> web.StreamResponse:
        return await websocket_session(request, forwarder, target(request), timeout, request_id_of(request))

    async def schema(request: web.Request) -> web.StreamResponse:
        return await schema_answer(forwarder, target(request), timeout, request_id_of(request))

    async def wake_route(request: web.Request) -> web.Response:
        try:
            deployment = target(request)()
            return web.json_response(await wake(deployment.deployment_id), status=202)
        except GatewayError as error:
            return error_response(error)

    # Keys are checked inside json_http_errors: an unknown path asked without a key is 401, not 404.
    # The request ID comes first, so that every answer (a refusal too) carries it.
    app = web.Application(middlewares=[assign_request_id, json_http_errors, authenticate])
    stamp_request_ids(app)
    if metrics is not None and metrics.enabled:
        registry = metrics.registry

        async def scrape(_request: web.Request) -> web.Response:
            return exposition(registry)

        app.router.add_get(METRICS_PATH, scrape)
    for verb, handler, expect in (("predict", call, bodies.defer_continue), ("wake", wake_route, None)):
        for prefix in PREFIXES:
            app.router.add_post(f"{prefix}/{verb}", handler, expect_handler=expect)
    add_truss_routes(
        app,
        PREFIXES,
        call,
        bodies.defer_continue,
        websocket,
        schema,
    )
    return app


# The ways a route names its deployment: by the model's production or development, by any of
# its environments by name (`staging`; production too), or by its ID.
ENVIRONMENT_PREFIX = f"/model/{{model_id}}/{{environment:{PRODUCTION}|{DEVELOPMENT}}}"
NAMED_ENVIRONMENT_PREFIX = "/model/{model_id}/environments/{environment}"
DEPLOYMENT_PREFIX = "/model/{model_id}/deployment/{deployment_id}"
PREFIXES = (ENVIRONMENT_PREFIX, NAMED_ENVIRONMENT_PREFIX, DEPLOYMENT_PREFIX)


async def relay(
    request: web.Request,
    payload: bytes,
    forwarder: Forwarder,
    resolve: Callable[[], rt.DeploymentRoute],
    timeout: float,
    method: str,
    observation: Observation,
) -> web.StreamResponse:
    """A model error after the stream has started ends the response cleanly (the error is
    in the replica's log), as Truss does; any other failure mid-stream (a stalled model,
    a lost replica) cuts the body short, so the client can tell the stream broke."""
    content_type = request.headers.get("Content-Type", "")
    invoke = rs.InvokeStreamRequest(
        payload=payload,
        content_type=DEFAULT_CONTENT_TYPE if content_type in UNTYPED else content_type,
        method=method,
    )
    chunks = forwarder.stream(resolve, invoke, timeout, request_id_of(request), observation=observation)
    try:
        first = rs.InvokeStreamResponse.FromString(await anext(chunks))
    except StopAsyncIteration:
        return web.Response(body=b"", headers={"Content-Type": DEFAULT_CONTENT_TYPE})
    except GatewayError as error:
        return error_response(error)
    if first.complete:
        await chunks.aclose()
        return web.Response(body=first.chunk, headers={"Content-Type": first.content_type or DEFAULT_CONTENT_TYPE})
    if accepts_only_json(request):
        try:
            body = await gather_json(first, chunks, forwarder.max_request_bytes)
        except GatewayError as error:
            return error_response(error)
        return web.Response(body=body, headers={"Content-Type": DEFAULT_CONTENT_TYPE})
    response = web.StreamResponse(headers={"Content-Type": first.content_type or "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(first.chunk)
    observation.streamed()
    try:
        async for raw in chunks:
            await response.write(rs.InvokeStreamResponse.FromString(raw).chunk)
    except GatewayError as error:
        observation.failed_mid_stream(error.http_status)
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


async def gather_json(first: rs.InvokeStreamResponse, rest: AsyncGenerator[bytes, None], limit: int) -> bytes:
    """A streaming model's chunks as one JSON document: JSON values become an array, text a
    string (Truss joins the chunks as text). Bytes that are not text have no JSON form."""
    parts, kinds, size = [first.chunk], {_media_type(first.content_type)}, len(first.chunk)
    try:
        async for raw in rest:
            message = rs.InvokeStreamResponse.FromString(raw)
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


def _close_lingering(request: web.Request) -> None:
    """End a connection whose body will not be read: the answer, then FIN, then close."""
    transport = request.transport
    if transport is None or not transport.can_write_eof():
        request.protocol.force_close()
        return
    transport.write_eof()
    asyncio.get_running_loop().call_later(LINGER_SECONDS, request.protocol.force_close)
