"""Credentials of the platform's own parts, and the one interceptor that checks them.

Two internal surfaces are not user surfaces: the controller's RouteService (only
gateways call it, with the controller's internal token, kept 0600 in its data
directory) and each replica's ReplicaService (only the gateway and the controller
call it, with the token the controller issued at that replica's start). Neither
accepts a user API key. Health checking and reflection stay open for probes.
"""

from __future__ import annotations

import hmac
import logging
import os
import pathlib
import secrets
from collections.abc import Callable, Iterable

import grpc

from slipway.status import rich_status

log = logging.getLogger("slipway.internal_auth")

INTERNAL_TOKEN_HEADER = "x-slipway-internal-token"
REPLICA_TOKEN_HEADER = "x-slipway-replica-token"
INTERNAL_TOKEN_FILE = "internal.token"
# How a forked replica receives its token: removed from its environment before any model code runs.
REPLICA_TOKEN_ENV = "SLIPWAY_REPLICA_TOKEN"
MAX_TOKEN_FILE_BYTES = 1024


class TokenFileError(Exception):
    """A token file that cannot be used (missing, empty, too large, unreadable)."""


def new_token() -> str:
    """256 random bits, URL-safe text (fits a metadata value)."""
    return secrets.token_urlsafe(32)


def write_private(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path`, readable only by this user whatever the umask (replaced atomically)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_token_file(path: pathlib.Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as error:
        raise TokenFileError(f"cannot read the internal token file {path}: {error.strerror}") from None
    token = data.decode(errors="replace").strip()
    if not token or len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(f"the internal token file {path} holds no token")
    return token


def issue_internal_token(data_dir: pathlib.Path) -> str:
    """The controller's internal token: the one in `<data_dir>/internal.token`, created on first start
    (kept across restarts, so a standalone gateway's copy stays valid)."""
    path = data_dir / INTERNAL_TOKEN_FILE
    if path.exists():
        os.chmod(path, 0o600)
        return read_token_file(path)
    token = new_token()
    write_private(path, token)
    return token


def presented(metadata: Iterable[tuple[str, str | bytes]] | None, header: str) -> str | None:
    for key, value in metadata or ():
        if key == header:
            return value if isinstance(value, str) else None
    return None


def token_refusal(header: str, token: bytes, value: str | None, kind: str) -> tuple[str, str] | None:
    """None when `value` (what a call presented in `header`) is `token`, else the reason
    (<KIND>_TOKEN_MISSING / <KIND>_TOKEN_INVALID) and message of its refusal."""
    if value is None:
        problem, message = "MISSING", f"this is an internal surface: the call needs the {header} credential"
    elif hmac.compare_digest(value.encode(), token):
        return None
    else:
        problem, message = "INVALID", f"the {header} credential is not valid here"
    return f"{kind}_TOKEN_{problem}", message


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls to `services` that do not carry `token` in metadata key `header`
    (UNAUTHENTICATED, reason <KIND>_TOKEN_MISSING / <KIND>_TOKEN_INVALID); other services pass."""

    def __init__(
        self,
        header: str,
        token: str,
        services: Iterable[str],
        kind: str,
        on_refused: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        if not token:
            raise ValueError("an internal surface needs a token")
        self._header = header
        self._token = token.encode()
        self._prefixes = tuple(f"/{service}/" for service in services)
        self._kind = kind
        # Told {method, peer, reason} of every refused call (a replica logs its own way).
        self._on_refused = on_refused or _log_refusal

    def _refusal(self, value: str | None) -> tuple[grpc.Status, str] | None:
        """None for the right token, else the status to answer and its reason."""
        refusal = token_refusal(self._header, self._token, value, self._kind)
        if refusal is None:
            return None
        reason, message = refusal
        return rich_status(grpc.StatusCode.UNAUTHENTICATED, reason, message), reason

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefixes):
            return handler
        refusal = self._refusal(presented(handler_call_details.invocation_metadata, self._header))
        if refusal is None:
            return handler
        status, reason = refusal
        method = handler_call_details.method

        async def refuse(request_or_iterator, context: grpc.aio.ServicerContext) -> None:
            self._on_refused({"method": method, "peer": context.peer(), "reason": reason})
            await context.abort_with_status(status)

        return _same_shape(handler, refuse)


def _log_refusal(fields: dict[str, str]) -> None:
    log.warning("refused an internal call", extra={"fields": fields})


def _same_shape(handler: grpc.RpcMethodHandler, behaviour) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary or streaming each way) and serializers as `handler`."""

    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
