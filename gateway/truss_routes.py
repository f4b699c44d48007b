"""The routes of Truss's model server beyond predict, under each deployment's prefix.

Truss serves a model's OpenAI-compatible methods at /v1/chat/completions and
/v1/completions; the hosted platform reaches a deployment's own routes through
`.../sync/<route>`, so here they are

POST /model/{model_id}/production/sync/v1/chat/completions   (and development)
POST /model/{model_id}/deployment/{deployment_id}/sync/v1/chat/completions
and the same for /v1/completions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

# Truss route → the model method it calls.
OPENAI_ROUTES = {"/v1/chat/completions": "chat_completions", "/v1/completions": "completions"}
Call = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def add_truss_routes(app: web.Application, prefixes: tuple[str, ...], call: Call, expect_handler: Any) -> None:
    """`call(request, method)` forwards the request to model method `method`."""
    for route, method in OPENAI_ROUTES.items():

        async def handler(request: web.Request, method: str = method) -> web.StreamResponse:
            return await call(request, method)

        for prefix in prefixes:
            app.router.add_post(f"{prefix}/sync{route}", handler, expect_handler=expect_handler)
