"""Domain errors. Each names the rule that refused the operation.

The gRPC layer maps the kind of error to a status code in one place
(controller/status.py); nothing else knows about status codes.
"""

from __future__ import annotations


class SlipwayError(Exception):
    """A refused operation. `reason` is machine-readable (UPPER_SNAKE_CASE)."""

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}


class NotFound(SlipwayError):
    pass


class InvalidArgument(SlipwayError):
    pass


class FailedPrecondition(SlipwayError):
    pass


class AlreadyExists(SlipwayError):
    pass


class Aborted(SlipwayError):
    pass


class PermissionDenied(SlipwayError):
    pass


class ResourceExhausted(SlipwayError):
    pass


class Unavailable(SlipwayError):
    """Not served here now; another controller serves it (e.g. NOT_LEADER)."""
