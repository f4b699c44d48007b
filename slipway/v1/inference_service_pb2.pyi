from slipway.v1 import async_service_pb2 as _async_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Environment(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENVIRONMENT_UNSPECIFIED: _ClassVar[Environment]
    ENVIRONMENT_PRODUCTION: _ClassVar[Environment]
    ENVIRONMENT_DEVELOPMENT: _ClassVar[Environment]
ENVIRONMENT_UNSPECIFIED: Environment
ENVIRONMENT_PRODUCTION: Environment
ENVIRONMENT_DEVELOPMENT: Environment

class Target(_message.Message):
    __slots__ = ("model_id", "deployment_id", "environment", "environment_name")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    deployment_id: str
    environment: Environment
    environment_name: str
    def __init__(self, model_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., environment: _Optional[_Union[Environment, str]] = ..., environment_name: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("target", "payload", "content_type")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    target: Target
    payload: bytes
    content_type: str
    def __init__(self, target: _Optional[_Union[Target, _Mapping]] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("payload", "content_type", "deployment_id")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    content_type: str
    deployment_id: str
    def __init__(self, payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., deployment_id: _Optional[str] = ...) -> None: ...

class PredictStreamRequest(_message.Message):
    __slots__ = ("target", "payload", "content_type")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    target: Target
    payload: bytes
    content_type: str
    def __init__(self, target: _Optional[_Union[Target, _Mapping]] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class PredictStreamResponse(_message.Message):
    __slots__ = ("chunk", "content_type")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    content_type: str
    def __init__(self, chunk: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class AsyncPredictRequest(_message.Message):
    __slots__ = ("target", "payload", "content_type", "webhook_endpoint", "priority", "max_time_in_queue_seconds")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_TIME_IN_QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    target: Target
    payload: bytes
    content_type: str
    webhook_endpoint: str
    priority: int
    max_time_in_queue_seconds: int
    def __init__(self, target: _Optional[_Union[Target, _Mapping]] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., webhook_endpoint: _Optional[str] = ..., priority: _Optional[int] = ..., max_time_in_queue_seconds: _Optional[int] = ...) -> None: ...

class AsyncPredictResponse(_message.Message):
    __slots__ = ("request_id", "deployment_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deployment_id: str
    def __init__(self, request_id: _Optional[str] = ..., deployment_id: _Optional[str] = ...) -> None: ...

class GetAsyncRequestRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class GetAsyncRequestResponse(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _async_service_pb2.AsyncRequest
    def __init__(self, request: _Optional[_Union[_async_service_pb2.AsyncRequest, _Mapping]] = ...) -> None: ...

class CancelAsyncRequestRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelAsyncRequestResponse(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: _async_service_pb2.AsyncRequest
    def __init__(self, request: _Optional[_Union[_async_service_pb2.AsyncRequest, _Mapping]] = ...) -> None: ...

class ListAsyncRequestsRequest(_message.Message):
    __slots__ = ("model_id", "page_size", "page_token", "status")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    page_size: int
    page_token: str
    status: _async_service_pb2.AsyncRequestStatus
    def __init__(self, model_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[_async_service_pb2.AsyncRequestStatus, str]] = ...) -> None: ...

class ListAsyncRequestsResponse(_message.Message):
    __slots__ = ("requests", "next_page_token")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[_async_service_pb2.AsyncRequest]
    next_page_token: str
    def __init__(self, requests: _Optional[_Iterable[_Union[_async_service_pb2.AsyncRequest, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
