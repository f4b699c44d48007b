"""The replica's HTTP predict route (replica/direct.py says what it answers): POST /predict,
the gateway's HTTP answer (gateway/relay.py) for the model's chunks, in this process."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import grpc
from aiohttp import web

from gateway.errors import GatewayError
from gateway.http_limits import BodyReader, BodyTimeout, HttpLimits, LimitedSite
from gateway.relay import (
    Unobserved,
    error_response,
    invoke_request,
    json_http_errors,
    relay_chunks,
    stalled_body_response,
)
from gateway.request_id import assign_request_id, request_id_of
from gateway.request_id import install as stamp_request_ids
from replica.calls import ModelCalls
from replica.direct import bounded
from replica.model_request import CallState
from slipway import tracing
from slipway.data_plane import REPLICA_PREDICT_PATH
from slipway.internal_auth import REPLICA_TOKEN_HEADER, token_refusal
from slipway.limits import GATEWAY_LIMIT_HEADER
from slipway.limits import gateway_limit as gateway_limit_of


async def serve(sock: socket.socket, calls: ModelCalls, token: str, request_timeout: float, model_id: str = ""):
    """Serve the route on `sock` (bound and listening) in this event loop; the runner to stop."""
    runner = web.AppRunner(
        build_http_app(calls, token, request_timeout, model_id),
        handler_cancellation=True,
        access_log=None,
        # Stopped only once its calls are over (or past the drain): nothing left to wait for then.
        shutdown_timeout=1.0,
    )
    await runner.setup()
    host, port = sock.getsockname()[:2]
    await LimitedSite(runner, host, port, HttpLimits(), sock=sock).start()
    return runner


def build_http_app(
    calls: ModelCalls,
    token: str,
    request_timeout: float,
    model_id: str = "",
    limits: HttpLimits | None = None,
) -> web.Application:
    """The replica's HTTP predict route (the native data plane's HTTP route)."""
    bodies = BodyReader(limits or HttpLimits(), calls.max_bytes)
    expected = token.encode()

    @web.middleware
    async def authenticate(request: web.Request, handler) -> web.StreamResponse:
        refusal = token_refusal(REPLICA_TOKEN_HEADER, expected, request.headers.get(REPLICA_TOKEN_HEADER), "REPLICA")
        if refusal is not None:
            reason, message = refusal
            calls.log.warning("call_refused", method=f"{request.method} {request.path}", reason=reason)
            return error_response(GatewayError(grpc.StatusCode.UNAUTHENTICATED, reason, message))
        return await handler(request)

    async def predict(request: web.Request) -> web.StreamResponse:
        with tracing.http_server_span(request, model_id), calls.tracked(request_id_of(request)):
            calls_made: list[CallState] = []
            try:
                return await _predict(request, calls_made)
            finally:
                for call in calls_made:
                    call.disconnected.set()

    async def _predict(request: web.Request, calls_made: list[CallState]) -> web.StreamResponse:
        deadline = asyncio.get_running_loop().time() + request_timeout
        try:
            async with bodies.read(request) as payload:
                invoke = invoke_request(request, payload)
                make_call = _http_call_state(request, payload, calls_made)
                gateway_limit = gateway_limit_of(request.headers.get(GATEWAY_LIMIT_HEADER))
                chunks = bounded(calls.invoke_stream(invoke, make_call, gateway_limit), deadline)
                # A stream gathered for a JSON-only caller: bounded by the gateway's limit, as there.
                gathered = calls.max_bytes if gateway_limit is None else gateway_limit
                return await relay_chunks(request, chunks, gathered, Unobserved())
        except BodyTimeout as error:
            return await stalled_body_response(request, error)
        except GatewayError as error:  # the body was refused (too large)
            return error_response(error)

    app = web.Application(middlewares=[assign_request_id, json_http_errors, authenticate])
    stamp_request_ids(app)
    app.router.add_post(REPLICA_PREDICT_PATH, predict, expect_handler=bodies.defer_continue)
    return app


def _http_call_state(request: web.Request, payload: bytes, made: list[CallState]) -> Callable[[], CallState]:
    def make() -> CallState:
        headers = [(key.lower(), value) for key, value in request.headers.items()]
        proxy_headers = (REPLICA_TOKEN_HEADER, GATEWAY_LIMIT_HEADER)
        call = CallState(payload, [(key, value) for key, value in headers if key not in proxy_headers])
        made.append(call)
        return call

    return make
