"""The HTTP front (aiohttp): the same routes as the hosted platforms use.

POST /model/{model_id}/production/predict
POST /model/{model_id}/development/predict
POST /model/{model_id}/environments/{environment}/predict   (staging, ...; production too)
POST /model/{model_id}/deployment/{deployment_id}/predict
and the matching .../wake routes (Truss's other routes: gateway/truss_routes.py). The body is forwarded as it came; the model's
answer is relayed by gateway/relay.py (which a replica's own HTTP route shares). Every
error is a JSON body {"error": {"code", "reason", "message"}}.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.errors import GatewayError
from gateway.forwarder import Forwarder
from gateway.http_limits import BodyReader, BodyTimeout
from gateway.metrics import HTTP, GatewayMetrics, Observation
from gateway.relay import error_response, invoke_request, json_http_errors, parsed, relay_chunks, stalled_body_response
from gateway.request_id import assign_request_id, request_id_of
from gateway.request_id import install as stamp_request_ids
from gateway.routing import DEVELOPMENT, PRODUCTION
from gateway.truss_routes import add_truss_routes, schema_answer, websocket_session
from slipway import tracing
from slipway.metrics import METRICS_PATH, exposition
from slipway.v1 import route_service_pb2 as rt

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
            return await stalled_body_response(request, error)
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
        registry, refreshes = metrics.registry, metrics.before_scrape

        async def scrape(_request: web.Request) -> web.Response:
            for refresh in refreshes:
                refresh()
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
    """The request forwarded to a replica, its answer relayed (gateway/relay.py)."""
    invoke = invoke_request(request, payload, method)
    raw = forwarder.stream(resolve, invoke, timeout, request_id_of(request), observation=observation)
    return await relay_chunks(request, parsed(raw), forwarder.max_request_bytes, observation)
