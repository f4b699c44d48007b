"""What Truss's model server does with the types a model uses: pydantic input models
and fastapi's HTTPException.

pydantic and fastapi are imported only by models that use them: a model whose module
did not import pydantic cannot annotate with a pydantic model, and one that did not
import starlette cannot raise its HTTPException, so both are looked up in sys.modules
and the replica's own start stays free of them.
"""

from __future__ import annotations

import inspect
import json
import sys
import typing
from collections.abc import Callable
from typing import Any

import grpc

# The gRPC code for an HTTP status a model raises (google.rpc.Code's HTTP mapping). 503
# and 499 are not UNAVAILABLE / CANCELLED: the gateway retries those elsewhere, and the
# model has answered.
GRPC_CODE_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
MODEL_HTTP_ERROR = "MODEL_HTTP_ERROR"
INPUT_VALIDATION_FAILED = "INPUT_VALIDATION_FAILED"


class InputValidationError(ValueError):
    """The request does not match the model's pydantic input type; the caller's fault."""


def input_parser(method: Callable[..., Any] | None) -> Callable[[Any], Any] | None:
    """For a method whose first parameter is annotated with a pydantic model, the function
    that turns the decoded JSON input into that model (raising InputValidationError, with
    the errors as Truss words them); None for any other method."""
    pydantic = sys.modules.get("pydantic")
    if method is None or pydantic is None:
        return None
    try:
        parameters = list(inspect.signature(method).parameters.values())
        hints = typing.get_type_hints(method)
    except (TypeError, ValueError, NameError):
        return None
    if not parameters:
        return None
    annotation: Any = hints.get(parameters[0].name)
    if not (isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)):
        return None
    input_type: Any = annotation  # a pydantic model class

    def parse(value: Any) -> Any:
        try:
            return input_type.model_validate(value)
        except pydantic.ValidationError as exc:
            raise InputValidationError(format_validation_error(exc)) from None

    return parse


def format_validation_error(exc: Any) -> str:
    """A pydantic ValidationError as Truss's server reports it (errors.format_pydantic_validation_error)."""
    lines = ["Input Parsing Error:" if exc.error_count() == 1 else "Input Parsing Errors:"]
    for error in exc.errors(include_url=False, include_input=False):
        location = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
        lines.append(f"  `{location}`: {error['msg']}.")
    return "\n".join(lines)


def http_exception(cause: BaseException) -> tuple[int, str, bool] | None:
    """(status, detail as text, whether that text is JSON) when a model raised fastapi's
    (starlette's) HTTPException."""
    exceptions = sys.modules.get("starlette.exceptions")
    if exceptions is None or not isinstance(cause, exceptions.HTTPException):
        return None
    detail = cause.detail
    if isinstance(detail, str):
        return cause.status_code, detail, False
    return cause.status_code, json.dumps(detail, default=str), True


def grpc_code(http_status: int) -> grpc.StatusCode:
    if http_status in GRPC_CODE_BY_HTTP_STATUS:
        return GRPC_CODE_BY_HTTP_STATUS[http_status]
    return grpc.StatusCode.FAILED_PRECONDITION if 400 <= http_status < 500 else grpc.StatusCode.INTERNAL
