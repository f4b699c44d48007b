"""Checking user API keys on a server: the one gRPC interceptor per server (the
controller's and the gateway's), the record of failed attempts, and the caller an
accepted call runs as. The gateway's HTTP middleware uses the same Authenticator."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc

from slipway import keys
from slipway.keys import AuthError, KeyRecord, Scope
from slipway.status import rich_status

log = logging.getLogger("slipway.auth")

KEYS_UNAVAILABLE = "API_KEYS_UNAVAILABLE"
GRPC_CODES = {keys.SCOPE: grpc.StatusCode.PERMISSION_DENIED, KEYS_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE}
AUTHORIZATION = "authorization"


def grpc_code(error: AuthError) -> grpc.StatusCode:
    return GRPC_CODES.get(error.reason, grpc.StatusCode.UNAUTHENTICATED)


@dataclass(frozen=True)
class Caller:
    """Who an accepted call runs as. `authorization`: the header it came with, passed on by
    calls made on its behalf (a gateway asking the controller to wake a deployment)."""

    key: KeyRecord
    authorization: str


# The caller of the call being served (None with authentication off).
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("current_caller", default=None)


@dataclass(frozen=True)
class FailureLimits:
    """Past `free_failures` refused credentials from one peer (host) within `window_seconds`,
    each refusal waits, doubling from 0.1 s up to `max_delay_seconds`. At most `max_peers`
    are remembered (the longest quiet forgotten first): a flood of peers costs bounded memory."""

    free_failures: int = 5
    window_seconds: float = 60.0
    max_delay_seconds: float = 2.0
    max_peers: int = 10_000


class FailureGuard:
    """Counts refused credentials per peer, and says how long a refusal waits (FailureLimits)."""

    def __init__(self, limits: FailureLimits = FailureLimits()) -> None:
        self.free_failures = limits.free_failures
        self.window = limits.window_seconds
        self.max_delay = limits.max_delay_seconds
        self.max_peers = limits.max_peers
        self.total = 0
        self._peers: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def failed(self, peer: str, now: float) -> tuple[int, float]:
        """Record one failure; (failures from the peer within the window, seconds to wait)."""
        self.total += 1
        count, last = self._peers.pop(peer, (0, now))
        count = 1 if now - last > self.window else count + 1
        self._peers[peer] = (count, now)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        excess = count - self.free_failures
        return count, 0.0 if excess <= 0 else min(self.max_delay, 0.05 * 2 ** min(excess, 16))


class Authenticator:
    """Checks the `authorization` value of a call against the key records it is given."""

    def __init__(
        self,
        records: Callable[[], Mapping[str, KeyRecord] | None],
        guard: FailureGuard | None = None,
        on_accept: Callable[[str], None] = lambda key_id: None,
        enabled: bool = True,
        on_refuse: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._records = records
        # Called with the reason of every refused credential (the gateway counts them).
        self._on_refuse = on_refuse
        self.guard = guard or FailureGuard()
        self._on_accept = on_accept
        self.enabled = enabled

    async def check(self, header: str | None, peer: str, scope: Scope, what: str) -> Caller | None:
        """The caller, or AuthError (after the wait a failing peer has earned)."""
        if not self.enabled:
            return None
        records = self._records()
        if records is None:
            raise AuthError(KEYS_UNAVAILABLE, "the server does not know the API keys yet (controller unreachable)")
        try:
            record = keys.verify(header, records, time.time())
            keys.require(record, scope, what)
        except AuthError as error:
            self._on_refuse(error.reason)
            count, delay = self.guard.failed(peer, time.monotonic())
            if count <= self.guard.free_failures or count & (count - 1) == 0:
                log.warning(
                    "API key refused",
                    extra={"fields": {"reason": error.reason, "key_id": error.key_id, "peer": peer, "failures": count}},
                )
            if delay:
                await asyncio.sleep(delay)
            raise
        self._on_accept(record.id)
        return Caller(record, header or "")


# The caller's address, as the native data plane's proxy sends it (gateway/native/).
FORWARDED_FOR = "x-forwarded-for"


def peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` → `ipv4:127.0.0.1` (one host's connections count together)."""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


def required_scope(method: str, method_scopes: Mapping[str, Scope]) -> Scope:
    """`method` is `/package.Service/Method`; a method's entry wins over its service's;
    anything not listed needs admin."""
    full = method.lstrip("/")
    return method_scopes.get(full) or method_scopes.get(full.split("/", 1)[0]) or Scope.ADMIN


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Every call to a service outside `skipped` needs a key with the method's scope.
    `skipped`: open services (health, reflection) and internal ones, which another
    interceptor guards with credentials that are not user keys."""

    def __init__(
        self,
        authenticator: Authenticator,
        method_scopes: Mapping[str, Scope],
        skipped: frozenset[str],
        forwarded: bool = False,
    ) -> None:
        self._authenticator = authenticator
        # Behind the native data plane's proxy (only it reaches this server): the caller's
        # host is the proxy's `x-forwarded-for`, not the peer.
        self._forwarded = forwarded
        self._method_scopes = method_scopes
        self._skipped = skipped
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        guarded = self._handlers.get(method)
        if guarded is not None:
            return guarded
        handler = await continuation(handler_call_details)
        if handler is None or not self._authenticator.enabled or method.lstrip("/").split("/")[0] in self._skipped:
            return handler  # (not remembered: callers choose the names of unknown methods)
        scope = required_scope(method, self._method_scopes)

        def check(context: grpc.aio.ServicerContext) -> Awaitable[Caller | None]:
            metadata = dict(context.invocation_metadata() or ())
            peer = (self._forwarded and metadata.get(FORWARDED_FOR)) or peer_host(context.peer())
            return self._authenticator.check(metadata.get(AUTHORIZATION), peer, scope, method)

        guarded = self._handlers[method] = _guarded(handler, check)
        return guarded


def _guarded(handler: grpc.RpcMethodHandler, check) -> grpc.RpcMethodHandler:
    """`handler`, running only once `check(context)` accepts the caller, as that caller."""
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    behaviour = getattr(handler, kind)

    async def admit(context) -> None:
        try:
            current_caller.set(await check(context))
        except AuthError as error:
            await context.abort_with_status(rich_status(grpc_code(error), error.reason, error.message))

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request, context):
            await admit(context)
            async for item in behaviour(request, context):
                yield item

        wrapped = stream
    else:

        async def unary(request, context):
            await admit(context)
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result

        wrapped = unary
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
