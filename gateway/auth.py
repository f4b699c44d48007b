"""User API keys on the gateway: the gRPC InferenceService and every HTTP route need a
key with the inference scope (admin and deploy keys include it), GET /metrics one with the
metrics scope (or admin), checked against the
key records of the controller's route stream, so a revocation arrives with the next
route version. An inference key limited to some models is checked once the request's
target is resolved, whichever way it was named (model ID or name, deployment ID,
development alias)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.errors import refused_key
from slipway import keys
from slipway.auth import FORWARDED_FOR, Authenticator, current_caller
from slipway.keys import AuthError, Scope
from slipway.metrics import METRICS_PATH
from slipway.v1 import inference_service_pb2
from slipway.v1 import route_service_pb2 as rt

METHOD_SCOPES = {inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name: Scope.INFERENCE}
WWW_AUTHENTICATE = 'Api-Key realm="slipway"'


def require_model_access(deployment: rt.DeploymentRoute) -> rt.DeploymentRoute:
    caller = current_caller.get()
    if caller is not None:
        try:
            keys.require_model(caller.key, deployment.model_id)
        except AuthError as error:
            raise refused_key(error) from None
    return deployment


def http_middleware(authenticator: Authenticator, forwarded: bool = False) -> Middleware:
    """`forwarded`: behind the native data plane's proxy, whose X-Forwarded-For names the caller."""

    @web.middleware
    async def authenticate(request: web.Request, handler) -> web.StreamResponse:
        peer = (forwarded and request.headers.get(FORWARDED_FOR)) or request.remote or ""
        try:
            caller = await authenticator.check(
                request.headers.get("Authorization"),
                peer,
                Scope.METRICS if request.path == METRICS_PATH else Scope.INFERENCE,
                f"{request.method} {request.path}",
            )
        except AuthError as error:
            refusal = refused_key(error)
            headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if refusal.http_status == 401 else {}
            return web.json_response(refusal.to_json(), status=refusal.http_status, headers=headers)
        current_caller.set(caller)
        return await handler(request)

    return authenticate
