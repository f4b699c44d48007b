"""The HTTP front (aiohttp): the same routes as the hosted platforms use.

POST /model/{model_id}/production/predict
POST /model/{model_id}/development/predict
POST /model/{model_id}/deployment/{deployment_id}/predict
and the matching .../wake routes. The body is forwarded as it came; the model's
output is returned as it left the replica, streamed in chunks when the model
yields. Every error is a JSON body {"error": {"code", "reason", "message"}}.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import GatewayError
from gateway.forwarder import Forwarder
from gateway.routing import DEVELOPMENT, PRODUCTION
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import route_service_pb2 as rt

DEFAULT_CONTENT_TYPE = "application/json"
# What curl and HTML forms send when the caller names no type: the body is meant as JSON.
UNTYPED = ("", "application/x-www-form-urlencoded")
Resolver = Callable[[str, str, str], rt.DeploymentRoute]


def build_app(
    forwarder: Forwarder, resolver: Resolver, wake: Callable[[str], Awaitable[dict]], timeout: float
) -> web.Application:
    def target(request: web.Request) -> Callable[[], rt.DeploymentRoute]:
        model_id = request.match_info["model_id"]
        deployment_id = request.match_info.get("deployment_id", "")
        environment = request.match_info.get("environment", PRODUCTION)
        return lambda: resolver(model_id, deployment_id, environment)

    async def predict(request: web.Request) -> web.StreamResponse:
        resolve = target(request)
        content_type = request.headers.get("Content-Type", "")
        invoke = rs.InvokeStreamRequest(
            payload=await request.read(), content_type=DEFAULT_CONTENT_TYPE if content_type in UNTYPED else content_type
        )
        chunks = forwarder.stream(resolve, invoke, timeout)
        try:
            first = rs.InvokeStreamResponse.FromString(await anext(chunks))
        except StopAsyncIteration:
            return web.Response(body=b"", headers={"Content-Type": DEFAULT_CONTENT_TYPE})
        except GatewayError as error:
            return web.json_response(error.to_json(), status=error.http_status)
        if first.complete:
            await chunks.aclose()
            return web.Response(body=first.chunk, headers={"Content-Type": first.content_type or DEFAULT_CONTENT_TYPE})
        response = web.StreamResponse(headers={"Content-Type": first.content_type or "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(first.chunk)
        try:
            async for raw in chunks:
                await response.write(rs.InvokeStreamResponse.FromString(raw).chunk)
        except GatewayError:
            # The status line is gone; ending the body without its last chunk tells the client it broke.
            request.transport.close()
            return response
        await response.write_eof()
        return response

    async def wake_route(request: web.Request) -> web.Response:
        try:
            deployment = target(request)()
            return web.json_response(await wake(deployment.deployment_id), status=202)
        except GatewayError as error:
            return web.json_response(error.to_json(), status=error.http_status)

    async def not_found(request: web.Request) -> web.Response:
        error = {"code": "NOT_FOUND", "reason": "NO_SUCH_ROUTE", "message": f"no route {request.method} {request.path}"}
        return web.json_response({"error": error}, status=404)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    for verb, handler in (("predict", predict), ("wake", wake_route)):
        app.router.add_post(f"/model/{{model_id}}/{{environment:{PRODUCTION}|{DEVELOPMENT}}}/{verb}", handler)
        app.router.add_post(f"/model/{{model_id}}/deployment/{{deployment_id}}/{verb}", handler)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
