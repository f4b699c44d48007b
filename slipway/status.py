"""Rich gRPC errors: a status code plus a google.rpc.ErrorInfo, shared by all servers."""

from __future__ import annotations

import inspect

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from slipway.text import shorten

ERROR_DOMAIN = "slipway.dev"
# A status travels in response metadata (grpc-message, and the details again in
# grpc-status-details-bin), which gRPC caps at 16 KiB: a value a caller sent, echoed back
# whole, would turn any refusal into RESOURCE_EXHAUSTED. Limits in UTF-8 bytes.
MAX_STATUS_MESSAGE_BYTES = 2048
MAX_METADATA_VALUE_BYTES = 256


def rich_status(
    code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None
) -> grpc.Status:
    detail = any_pb2.Any()
    metadata = {key: shorten(value, MAX_METADATA_VALUE_BYTES) for key, value in (metadata or {}).items()}
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    message = shorten(message, MAX_STATUS_MESSAGE_BYTES)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


class _Undecodable:
    """What a request that failed to deserialize is handed to its method as."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def refuse_undecodable_requests(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler`, answering a request that is not a valid message of its type (such as
    invalid UTF-8 in a string field) with INVALID_ARGUMENT MALFORMED_REQUEST: when the
    deserializer itself raises, grpc answers UNKNOWN. Async unary-request methods only;
    any other handler is returned unchanged."""
    if handler.request_streaming or handler.request_deserializer is None:
        return handler
    behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary
    deserialize = handler.request_deserializer

    def tolerant_deserialize(data: bytes):
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Undecodable(error)

    async def refuse(request: _Undecodable, context) -> None:
        await context.abort_with_status(
            rich_status(
                grpc.StatusCode.INVALID_ARGUMENT,
                "MALFORMED_REQUEST",
                f"the request is not a valid message of its type ({request.error}); string fields must be UTF-8",
            )
        )

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request, context):
            if isinstance(request, _Undecodable):
                await refuse(request, context)
            async for item in behaviour(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=tolerant_deserialize, response_serializer=handler.response_serializer
        )
    if inspect.iscoroutinefunction(behaviour):

        async def unary(request, context):
            if isinstance(request, _Undecodable):
                await refuse(request, context)
            return await behaviour(request, context)

        make = (
            grpc.unary_stream_rpc_method_handler if handler.response_streaming else grpc.unary_unary_rpc_method_handler
        )
        return make(unary, request_deserializer=tolerant_deserialize, response_serializer=handler.response_serializer)
    return handler


class RefuseUndecodableRequests(grpc.aio.ServerInterceptor):
    """refuse_undecodable_requests for every method of a server."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = await continuation(handler_call_details)
            if handler is None:  # an unknown method, not remembered: callers choose the names
                return None
            handler = self._handlers[method] = refuse_undecodable_requests(handler)
        return handler
