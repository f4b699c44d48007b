from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class InvokeRequest(_message.Message):
    __slots__ = ("payload", "content_type", "method")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    content_type: str
    method: str
    def __init__(self, payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("payload", "content_type")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    content_type: str
    def __init__(self, payload: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class InvokeStreamRequest(_message.Message):
    __slots__ = ("payload", "content_type", "method")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    content_type: str
    method: str
    def __init__(self, payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class InvokeStreamResponse(_message.Message):
    __slots__ = ("chunk", "content_type", "complete")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    content_type: str
    complete: bool
    def __init__(self, chunk: _Optional[bytes] = ..., content_type: _Optional[str] = ..., complete: _Optional[bool] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("package_dir",)
    PACKAGE_DIR_FIELD_NUMBER: _ClassVar[int]
    package_dir: str
    def __init__(self, package_dir: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("ok", "error", "traceback", "seconds")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    traceback: str
    seconds: float
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ..., traceback: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...
