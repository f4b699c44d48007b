"""Gateway errors and the one place they map to gRPC and HTTP statuses."""

from __future__ import annotations

import json
import re

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from slipway import limits
from slipway.auth import grpc_code
from slipway.keys import AuthError
from slipway.status import ERROR_DOMAIN

RETRIABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
# The replica's reason for an HTTPException a model raised (replica/typed.py).
MODEL_HTTP_ERROR = "MODEL_HTTP_ERROR"
HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}
# Reasons whose HTTP status is not their code's: RESOURCE_EXHAUSTED is also a full wake
# queue (429, try later), but a message over the size limit never fits (413, or 500 when
# it is the model's answer: no retry helps either).
HTTP_STATUS_BY_REASON = {
    limits.REQUEST_TOO_LARGE: 413,
    limits.RESPONSE_TOO_LARGE: 500,
    "DEPLOYMENT_FAILED": 503,
    "ASYNC_PAYLOAD_TOO_LARGE": 413,
    "NOT_ACCEPTABLE": 406,
    # The client stopped sending its body (DEADLINE_EXCEEDED would say 504, a gateway timeout).
    "REQUEST_BODY_TIMEOUT": 408,
}
# A failure in the model's own code (the replica's INTERNAL without a reason of its own).
MODEL_ERROR = "MODEL_ERROR"
# The model's own failures: its code raised, or it raised an HTTPException (replica/typed.py).
MODEL_FAILURES = frozenset({MODEL_ERROR, "MODEL_HTTP_ERROR"})
# grpc core's own refusal of an oversized message (a replica or channel with other limits).
_GRPC_TOO_LARGE = re.compile(r"message larger than max \((\d+) vs\. (\d+)\)")


class GatewayError(Exception):
    """A request the gateway cannot serve. `reason` is machine-readable."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS_BY_REASON.get(self.reason) or HTTP_STATUS.get(self.code, 500)

    def to_json(self) -> dict:
        return {"error": {"code": self.code.name, "reason": self.reason, "message": self.message}}


class ModelHttpError(GatewayError):
    """A model raised fastapi's HTTPException(status_code, detail): answered with that status
    and Truss's body, {"error": detail}."""

    def __init__(self, code: grpc.StatusCode, message: str, status: int, detail: object) -> None:
        super().__init__(code, MODEL_HTTP_ERROR, message)
        self._status = status
        self._detail = detail

    @property
    def http_status(self) -> int:
        return self._status

    def to_json(self) -> dict:
        return {"error": self._detail}


def not_found(reason: str, message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.NOT_FOUND, reason, message)


def refused_key(error: AuthError) -> GatewayError:
    return GatewayError(grpc_code(error), error.reason, error.message)


def request_too_large(size: int | None, limit: int) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, limits.REQUEST_TOO_LARGE, limits.too_large("the request body", size, limit)
    )


def response_too_large(size: int, limit: int, what: str = "the model's response") -> GatewayError:
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, limits.RESPONSE_TOO_LARGE, limits.too_large(what, size, limit)
    )


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The call's google.rpc.ErrorInfo (ours), or None when it has none."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the status
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info
    return None


def error_info_reason(error: grpc.aio.AioRpcError) -> str:
    """The reason of the call's google.rpc.ErrorInfo (ours), or "" when it has none."""
    info = error_info(error)
    return info.reason if info is not None else ""


def is_retriable(error: grpc.aio.AioRpcError) -> bool:
    """The replica never took the call (so another may): not an answer the model chose."""
    return error.code() in RETRIABLE and error_info_reason(error) != MODEL_HTTP_ERROR


def from_replica(error: grpc.aio.AioRpcError, request_bytes: int) -> GatewayError:
    """A replica's error, passed on with its code and reason (the model's own error stays visible).

    `request_bytes`: the size of the request sent, to tell which message grpc core refused
    when it refused one as too large."""
    code = error.code()
    info = error_info(error)
    reason, metadata = (info.reason, dict(info.metadata)) if info is not None else ("", {})
    return from_status(code, error.details() or code.name, reason, metadata, request_bytes)


def from_status(
    code: grpc.StatusCode, details: str, reason: str, metadata: dict[str, str], request_bytes: int
) -> GatewayError:
    """A replica's status (its code, message, ErrorInfo reason and metadata) as the error the
    caller gets: the gateway's for a replica's gRPC answer, and a replica's own direct fronts'
    (replica/direct.py) for the same failure."""
    if reason == MODEL_HTTP_ERROR:
        detail = json.loads(details) if metadata.get("detail_is_json") == "true" else details
        return ModelHttpError(code, details, int(metadata["http_status"]), detail)
    if not reason and code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        too_large = _GRPC_TOO_LARGE.search(details)
        if too_large is not None:
            size, limit = int(too_large[1]), int(too_large[2])
            if request_bytes > limit:  # the replica's limit is below ours: it refused the request
                return request_too_large(size, limit)
            return response_too_large(size, limit)
    reason = reason or {
        grpc.StatusCode.INVALID_ARGUMENT: "BAD_REQUEST",
        grpc.StatusCode.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
        grpc.StatusCode.UNAVAILABLE: "REPLICA_UNAVAILABLE",
        grpc.StatusCode.RESOURCE_EXHAUSTED: "REPLICA_RESOURCE_EXHAUSTED",
    }.get(code, MODEL_ERROR)
    return GatewayError(code, reason, details)
