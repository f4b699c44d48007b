"""Gateway errors and the one place they map to gRPC and HTTP statuses."""

from __future__ import annotations

import grpc

HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.CANCELLED: 499,
}
# Reasons that HTTP names more precisely than their gRPC code does.
HTTP_STATUS_BY_REASON = {"REQUEST_TOO_LARGE": 413, "REQUEST_BODY_TIMEOUT": 408}


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


def not_found(reason: str, message: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.NOT_FOUND, reason, message)


def from_replica(error: grpc.aio.AioRpcError) -> GatewayError:
    """A replica's error, passed on with its code (the model's own error stays visible)."""
    code = error.code()
    reason = {
        grpc.StatusCode.INVALID_ARGUMENT: "BAD_REQUEST",
        grpc.StatusCode.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
        grpc.StatusCode.UNAVAILABLE: "REPLICA_UNAVAILABLE",
        grpc.StatusCode.RESOURCE_EXHAUSTED: "REPLICA_OVERLOADED",
    }.get(code, "MODEL_ERROR")
    return GatewayError(code, reason, error.details() or code.name)
