from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from slipway.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PushTarget(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_TARGET_UNSPECIFIED: _ClassVar[PushTarget]
    PUSH_TARGET_DEVELOPMENT: _ClassVar[PushTarget]
    PUSH_TARGET_PUBLISHED: _ClassVar[PushTarget]
    PUSH_TARGET_PRODUCTION: _ClassVar[PushTarget]

class EventOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_ORDER_UNSPECIFIED: _ClassVar[EventOrder]
    EVENT_ORDER_OLDEST_FIRST: _ClassVar[EventOrder]
    EVENT_ORDER_NEWEST_FIRST: _ClassVar[EventOrder]

class PatchResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATCH_RESULT_UNSPECIFIED: _ClassVar[PatchResult]
    PATCH_RESULT_APPLIED_IN_PLACE: _ClassVar[PatchResult]
    PATCH_RESULT_RESTARTED: _ClassVar[PatchResult]
    PATCH_RESULT_FAILED: _ClassVar[PatchResult]
    PATCH_RESULT_STORED: _ClassVar[PatchResult]
PUSH_TARGET_UNSPECIFIED: PushTarget
PUSH_TARGET_DEVELOPMENT: PushTarget
PUSH_TARGET_PUBLISHED: PushTarget
PUSH_TARGET_PRODUCTION: PushTarget
EVENT_ORDER_UNSPECIFIED: EventOrder
EVENT_ORDER_OLDEST_FIRST: EventOrder
EVENT_ORDER_NEWEST_FIRST: EventOrder
PATCH_RESULT_UNSPECIFIED: PatchResult
PATCH_RESULT_APPLIED_IN_PLACE: PatchResult
PATCH_RESULT_RESTARTED: PatchResult
PATCH_RESULT_FAILED: PatchResult
PATCH_RESULT_STORED: PatchResult

class CreateDeploymentRequest(_message.Message):
    __slots__ = ("package_archive", "package_sha256", "target", "deployment_name", "request_id", "model_name", "metadata", "environment")
    PACKAGE_ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    package_archive: bytes
    package_sha256: str
    target: PushTarget
    deployment_name: str
    request_id: str
    model_name: str
    metadata: _struct_pb2.Struct
    environment: str
    def __init__(self, package_archive: _Optional[bytes] = ..., package_sha256: _Optional[str] = ..., target: _Optional[_Union[PushTarget, str]] = ..., deployment_name: _Optional[str] = ..., request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., environment: _Optional[str] = ...) -> None: ...

class CreateDeploymentResponse(_message.Message):
    __slots__ = ("model", "deployment", "model_created", "warnings")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_CREATED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    model: _resources_pb2.Model
    deployment: _resources_pb2.Deployment
    model_created: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[_resources_pb2.Model, _Mapping]] = ..., deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., model_created: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    def __init__(self, deployment_id: _Optional[str] = ...) -> None: ...

class GetDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("model_id", "page_size", "page_token", "show_deleted")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHOW_DELETED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    page_size: int
    page_token: str
    show_deleted: bool
    def __init__(self, model_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., show_deleted: _Optional[bool] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Deployment]
    next_page_token: str
    def __init__(self, deployments: _Optional[_Iterable[_Union[_resources_pb2.Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateDeploymentRequest(_message.Message):
    __slots__ = ("deployment", "update_mask", "request_id")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    update_mask: _field_mask_pb2.FieldMask
    request_id: str
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ...) -> None: ...

class ActivateDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ActivateDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ...) -> None: ...

class DeactivateDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeactivateDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ...) -> None: ...

class PromoteDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "request_id", "environment")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    environment: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ..., environment: _Optional[str] = ...) -> None: ...

class PromoteDeploymentResponse(_message.Message):
    __slots__ = ("deployment", "completed")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    completed: bool
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., completed: _Optional[bool] = ...) -> None: ...

class WakeDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class WakeDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ...) -> None: ...

class WatchDeploymentsRequest(_message.Message):
    __slots__ = ("model_id", "deployment_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    deployment_id: str
    def __init__(self, model_id: _Optional[str] = ..., deployment_id: _Optional[str] = ...) -> None: ...

class WatchDeploymentsResponse(_message.Message):
    __slots__ = ("deployment", "initial")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    initial: bool
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., initial: _Optional[bool] = ...) -> None: ...

class ListUsageRecordsRequest(_message.Message):
    __slots__ = ("model_id", "page_size", "page_token", "days")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    page_size: int
    page_token: str
    days: int
    def __init__(self, model_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., days: _Optional[int] = ...) -> None: ...

class ListUsageRecordsResponse(_message.Message):
    __slots__ = ("usage_records", "next_page_token")
    USAGE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    usage_records: _containers.RepeatedCompositeFieldContainer[_resources_pb2.UsageRecord]
    next_page_token: str
    def __init__(self, usage_records: _Optional[_Iterable[_Union[_resources_pb2.UsageRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("model_id", "deployment_id", "page_size", "page_token", "order", "environment")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    deployment_id: str
    page_size: int
    page_token: str
    order: EventOrder
    environment: str
    def __init__(self, model_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order: _Optional[_Union[EventOrder, str]] = ..., environment: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Event]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[_resources_pb2.Event, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class FilePatch(_message.Message):
    __slots__ = ("path", "content", "delete")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: bytes
    delete: bool
    def __init__(self, path: _Optional[str] = ..., content: _Optional[bytes] = ..., delete: _Optional[bool] = ...) -> None: ...

class PatchDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "base_package_digest", "patches", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    base_package_digest: str
    patches: _containers.RepeatedCompositeFieldContainer[FilePatch]
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., base_package_digest: _Optional[str] = ..., patches: _Optional[_Iterable[_Union[FilePatch, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PatchDeploymentResponse(_message.Message):
    __slots__ = ("deployment", "package_digest", "result", "error", "traceback", "apply_seconds", "warnings")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    APPLY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    deployment: _resources_pb2.Deployment
    package_digest: str
    result: PatchResult
    error: str
    traceback: str
    apply_seconds: float
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deployment: _Optional[_Union[_resources_pb2.Deployment, _Mapping]] = ..., package_digest: _Optional[str] = ..., result: _Optional[_Union[PatchResult, str]] = ..., error: _Optional[str] = ..., traceback: _Optional[str] = ..., apply_seconds: _Optional[float] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...
