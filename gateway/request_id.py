"""Request IDs on the HTTP front: each request gets one (the caller's valid X-Request-Id,
or a fresh one; see slipway/request_ids.py) before anything else runs, and every response
the gateway prepares carries it in X-Slipway-Request-Id: answers, errors (401 and 404
included), streams and websocket handshakes alike."""

from __future__ import annotations

from aiohttp import web

from slipway import request_ids

_KEY = web.RequestKey("slipway_request_id", str)


@web.middleware
async def assign_request_id(request: web.Request, handler) -> web.StreamResponse:
    request[_KEY] = request_ids.adopt(request.headers.get(request_ids.CALLER_HEADER))
    return await handler(request)


async def stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """An on_response_prepare hook: headers are still open here, even for a stream."""
    request_id = request.get(_KEY)
    if request_id:
        response.headers[request_ids.RESPONSE_HEADER] = request_id


def request_id_of(request: web.Request) -> str:
    return request.get(_KEY) or ""


def install(app: web.Application) -> None:
    """Stamp every response of `app` (assign_request_id must be its first middleware)."""
    app.on_response_prepare.append(stamp_response)
