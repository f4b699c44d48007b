from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
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
