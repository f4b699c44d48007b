"""The one place that turns domain errors into gRPC statuses.

Every refusal becomes a canonical status code with a google.rpc.ErrorInfo detail
(domain `slipway.dev`, the rule's reason, and metadata such as the deployment ID),
so clients in any language can branch on the reason, not on message text.
"""

from __future__ import annotations

import functools
import inspect
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from controller.errors import AlreadyExists, Aborted, FailedPrecondition, InvalidArgument, NotFound, SlipwayError

ERROR_DOMAIN = "slipway.dev"
log = logging.getLogger("slipway.api")

CODES: dict[type[SlipwayError], int] = {
    NotFound: code_pb2.NOT_FOUND,
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    AlreadyExists: code_pb2.ALREADY_EXISTS,
    Aborted: code_pb2.ABORTED,
}


def to_status(error: SlipwayError) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))
    return status_pb2.Status(code=CODES[type(error)], message=error.message, details=[detail])


def grpc_errors(method):
    """Wrap a servicer method (unary or server-streaming) so domain errors abort the RPC."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self, request, context: grpc.aio.ServicerContext):
            try:
                async for item in method(self, request, context):
                    yield item
            except SlipwayError as error:
                await context.abort_with_status(rpc_status.to_status(to_status(error)))

        return stream

    @functools.wraps(method)
    async def unary(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except SlipwayError as error:
            await context.abort_with_status(rpc_status.to_status(to_status(error)))

    return unary


def map_domain_errors(cls):
    """Class decorator: apply grpc_errors to every RPC method (CamelCase names) of a servicer."""
    for name, member in list(vars(cls).items()):
        if name[:1].isupper() and callable(member):
            setattr(cls, name, grpc_errors(member))
    return cls
