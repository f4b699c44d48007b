"""The routes of Truss's model server beyond predict, under each deployment's prefix.

Truss serves a model's OpenAI-compatible methods at /v1/chat/completions and
/v1/completions; the hosted platform reaches a deployment's own routes through
`.../sync/<route>`, so here they are

POST /model/{model_id}/production/sync/v1/chat/completions   (and development)
POST /model/{model_id}/deployment/{deployment_id}/sync/v1/chat/completions
and the same for /v1/completions; and a websocket model's session at

GET /model/{model_id}/production/websocket   (and development, and deployment/{id})

as the hosted platform exposes it, bridged to the replica's InvokeWebsocket call; and
a typed model's schema at GET .../sync/v1/models/model/schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from gateway.errors import GatewayError
from gateway.forwarder import Forwarder
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import route_service_pb2 as rt

# Truss route → the model method it calls.
OPENAI_ROUTES = {"/v1/chat/completions": "chat_completions", "/v1/completions": "completions"}
SCHEMA_ROUTE = "/v1/models/model/schema"
Call = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
# Close codes: the server failed (the replica, or the model: Truss's code), a normal end.
SERVER_ERROR = 1011
NORMAL_CLOSURE = 1000
MAX_CLOSE_REASON_BYTES = 123  # what a websocket close frame holds


def add_truss_routes(
    app: web.Application,
    prefixes: tuple[str, ...],
    call: Call,
    expect_handler: Any,
    websocket: Callable[[web.Request], Awaitable[web.StreamResponse]],
    schema: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> None:
    """`call(request, method)` forwards the request to model method `method`;
    `websocket(request)` runs a websocket session; `schema(request)` answers the schema."""
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/websocket", websocket)
        app.router.add_get(f"{prefix}/sync{SCHEMA_ROUTE}", schema)
    for route, method in OPENAI_ROUTES.items():

        async def handler(request: web.Request, method: str = method) -> web.StreamResponse:
            return await call(request, method)

        for prefix in prefixes:
            app.router.add_post(f"{prefix}/sync{route}", handler, expect_handler=expect_handler)


async def websocket_session(
    request: web.Request,
    forwarder: Forwarder,
    resolve: Callable[[], rt.DeploymentRoute],
    timeout: float,
    request_id: str = "",
) -> web.StreamResponse:
    """Bridge a client's websocket to the model's, frame for frame; `timeout` bounds the session."""
    try:
        resolve()  # an unknown or inactive target is answered before the upgrade
    except GatewayError as error:
        return web.json_response(error.to_json(), status=error.http_status)
    client = web.WebSocketResponse(max_msg_size=forwarder.max_request_bytes)
    await client.prepare(request)

    async def from_client() -> AsyncIterator[rs.InvokeWebsocketRequest]:
        async for message in client:
            if message.type is WSMsgType.TEXT:
                yield rs.InvokeWebsocketRequest(frame=rs.WebsocketFrame(text=message.data))
            elif message.type is WSMsgType.BINARY:
                yield rs.InvokeWebsocketRequest(frame=rs.WebsocketFrame(binary=message.data))
        close = rs.WebsocketClose(code=client.close_code or NORMAL_CLOSURE)
        yield rs.InvokeWebsocketRequest(frame=rs.WebsocketFrame(close=close))

    try:
        async for response in forwarder.websocket(resolve, from_client(), timeout, request_id):
            frame = response.frame
            kind = frame.WhichOneof("frame")
            if kind == "text":
                await client.send_str(frame.text)
            elif kind == "binary":
                await client.send_bytes(frame.binary)
            elif kind == "close":
                await client.close(code=frame.close.code or NORMAL_CLOSURE, message=_reason(frame.close.reason))
                break
    except GatewayError as error:
        await client.close(code=SERVER_ERROR, message=_reason(f"{error.reason}: {error.message}"))
    except ConnectionResetError:
        pass  # the client went away; its close frame (or none) already ended the session
    await client.close()
    return client


def _reason(text: str) -> bytes:
    return text.encode("utf-8")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")


async def schema_answer(
    forwarder: Forwarder, resolve: Callable[[], rt.DeploymentRoute], timeout: float, request_id: str = ""
) -> web.StreamResponse:
    try:
        _, raw = await forwarder.unary(resolve, rs.InvokeRequest(method="schema"), timeout, request_id)
    except GatewayError as error:
        return web.json_response(error.to_json(), status=error.http_status)
    return web.Response(body=rs.InvokeResponse.FromString(raw).payload, content_type="application/json")
