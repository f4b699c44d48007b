"""The one place that turns domain errors into gRPC statuses.

Every refusal becomes a canonical status code with a google.rpc.ErrorInfo detail
(domain `slipway.dev`, the rule's reason, and metadata such as the deployment ID),
so clients in any language can branch on the reason, not on message text.
"""

from __future__ import annotations

import functools
import inspect

import grpc

from controller.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SlipwayError,
    Unavailable,
)
from slipway.status import rich_status

CODES: dict[type[SlipwayError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Aborted: grpc.StatusCode.ABORTED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def to_status(error: SlipwayError) -> grpc.Status:
    return rich_status(CODES[type(error)], error.reason, error.message, error.metadata)


def grpc_errors(method):
    """Wrap a servicer method (unary or server-streaming) so domain errors abort the RPC."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self, request, context: grpc.aio.ServicerContext):
            try:
                async for item in method(self, request, context):
                    yield item
            except SlipwayError as error:
                await context.abort_with_status(to_status(error))

        return stream

    @functools.wraps(method)
    async def unary(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except SlipwayError as error:
            await context.abort_with_status(to_status(error))

    return unary


def map_domain_errors(cls):
    """Class decorator: apply grpc_errors to every RPC method (CamelCase names) of a servicer."""
    for name, member in list(vars(cls).items()):
        if name[:1].isupper() and callable(member):
            setattr(cls, name, grpc_errors(member))
    return cls
