import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AsyncRequestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASYNC_REQUEST_STATUS_UNSPECIFIED: _ClassVar[AsyncRequestStatus]
    ASYNC_REQUEST_STATUS_QUEUED: _ClassVar[AsyncRequestStatus]
    ASYNC_REQUEST_STATUS_IN_PROGRESS: _ClassVar[AsyncRequestStatus]
    ASYNC_REQUEST_STATUS_SUCCEEDED: _ClassVar[AsyncRequestStatus]
    ASYNC_REQUEST_STATUS_FAILED: _ClassVar[AsyncRequestStatus]
    ASYNC_REQUEST_STATUS_EXPIRED: _ClassVar[AsyncRequestStatus]
    ASYNC_REQUEST_STATUS_CANCELED: _ClassVar[AsyncRequestStatus]

class WebhookStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEBHOOK_STATUS_UNSPECIFIED: _ClassVar[WebhookStatus]
    WEBHOOK_STATUS_PENDING: _ClassVar[WebhookStatus]
    WEBHOOK_STATUS_SUCCEEDED: _ClassVar[WebhookStatus]
    WEBHOOK_STATUS_FAILED: _ClassVar[WebhookStatus]
    WEBHOOK_STATUS_NO_WEBHOOK: _ClassVar[WebhookStatus]

class AsyncRoute(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASYNC_ROUTE_UNSPECIFIED: _ClassVar[AsyncRoute]
    ASYNC_ROUTE_PRODUCTION: _ClassVar[AsyncRoute]
    ASYNC_ROUTE_DEVELOPMENT: _ClassVar[AsyncRoute]
    ASYNC_ROUTE_DEPLOYMENT: _ClassVar[AsyncRoute]
    ASYNC_ROUTE_ENVIRONMENT: _ClassVar[AsyncRoute]
ASYNC_REQUEST_STATUS_UNSPECIFIED: AsyncRequestStatus
ASYNC_REQUEST_STATUS_QUEUED: AsyncRequestStatus
ASYNC_REQUEST_STATUS_IN_PROGRESS: AsyncRequestStatus
ASYNC_REQUEST_STATUS_SUCCEEDED: AsyncRequestStatus
ASYNC_REQUEST_STATUS_FAILED: AsyncRequestStatus
ASYNC_REQUEST_STATUS_EXPIRED: AsyncRequestStatus
ASYNC_REQUEST_STATUS_CANCELED: AsyncRequestStatus
WEBHOOK_STATUS_UNSPECIFIED: WebhookStatus
WEBHOOK_STATUS_PENDING: WebhookStatus
WEBHOOK_STATUS_SUCCEEDED: WebhookStatus
WEBHOOK_STATUS_FAILED: WebhookStatus
WEBHOOK_STATUS_NO_WEBHOOK: WebhookStatus
ASYNC_ROUTE_UNSPECIFIED: AsyncRoute
ASYNC_ROUTE_PRODUCTION: AsyncRoute
ASYNC_ROUTE_DEVELOPMENT: AsyncRoute
ASYNC_ROUTE_DEPLOYMENT: AsyncRoute
ASYNC_ROUTE_ENVIRONMENT: AsyncRoute

class AsyncRequest(_message.Message):
    __slots__ = ("request_id", "model_id", "deployment_id", "status", "webhook_status", "priority", "create_time", "queue_deadline", "start_time", "finish_time", "attempts", "output", "output_content_type", "error_code", "error_reason", "error_message", "webhook_endpoint", "webhook_attempts", "webhook_error", "route")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_STATUS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ERROR_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_id: str
    deployment_id: str
    status: AsyncRequestStatus
    webhook_status: WebhookStatus
    priority: int
    create_time: _timestamp_pb2.Timestamp
    queue_deadline: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    attempts: int
    output: bytes
    output_content_type: str
    error_code: str
    error_reason: str
    error_message: str
    webhook_endpoint: str
    webhook_attempts: int
    webhook_error: str
    route: AsyncRoute
    def __init__(self, request_id: _Optional[str] = ..., model_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., status: _Optional[_Union[AsyncRequestStatus, str]] = ..., webhook_status: _Optional[_Union[WebhookStatus, str]] = ..., priority: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., queue_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ..., output: _Optional[bytes] = ..., output_content_type: _Optional[str] = ..., error_code: _Optional[str] = ..., error_reason: _Optional[str] = ..., error_message: _Optional[str] = ..., webhook_endpoint: _Optional[str] = ..., webhook_attempts: _Optional[int] = ..., webhook_error: _Optional[str] = ..., route: _Optional[_Union[AsyncRoute, str]] = ...) -> None: ...

class EnqueueAsyncRequestRequest(_message.Message):
    __slots__ = ("model_id", "deployment_id", "route", "payload", "content_type", "webhook_endpoint", "priority", "max_time_in_queue_seconds")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_TIME_IN_QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    deployment_id: str
    route: AsyncRoute
    payload: bytes
    content_type: str
    webhook_endpoint: str
    priority: int
    max_time_in_queue_seconds: int
    def __init__(self, model_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., route: _Optional[_Union[AsyncRoute, str]] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., webhook_endpoint: _Optional[str] = ..., priority: _Optional[int] = ..., max_time_in_queue_seconds: _Optional[int] = ...) -> None: ...

class EnqueueAsyncRequestResponse(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: AsyncRequest
    def __init__(self, request: _Optional[_Union[AsyncRequest, _Mapping]] = ...) -> None: ...

class FetchAsyncRequestRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class FetchAsyncRequestResponse(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: AsyncRequest
    def __init__(self, request: _Optional[_Union[AsyncRequest, _Mapping]] = ...) -> None: ...

class CancelQueuedAsyncRequestRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CancelQueuedAsyncRequestResponse(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: AsyncRequest
    def __init__(self, request: _Optional[_Union[AsyncRequest, _Mapping]] = ...) -> None: ...

class ListModelAsyncRequestsRequest(_message.Message):
    __slots__ = ("model_id", "page_size", "page_token", "status")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    page_size: int
    page_token: str
    status: AsyncRequestStatus
    def __init__(self, model_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[AsyncRequestStatus, str]] = ...) -> None: ...

class ListModelAsyncRequestsResponse(_message.Message):
    __slots__ = ("requests", "next_page_token")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[AsyncRequest]
    next_page_token: str
    def __init__(self, requests: _Optional[_Iterable[_Union[AsyncRequest, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RotateWebhookSecretRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class RotateWebhookSecretResponse(_message.Message):
    __slots__ = ("model_id", "secret")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    secret: str
    def __init__(self, model_id: _Optional[str] = ..., secret: _Optional[str] = ...) -> None: ...

class DeleteWebhookSecretRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DeleteWebhookSecretResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
