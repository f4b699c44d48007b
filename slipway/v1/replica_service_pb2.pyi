from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WebsocketFrame(_message.Message):
    __slots__ = ("text", "binary", "close")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    text: str
    binary: bytes
    close: WebsocketClose
    def __init__(self, text: _Optional[str] = ..., binary: _Optional[bytes] = ..., close: _Optional[_Union[WebsocketClose, _Mapping]] = ...) -> None: ...

class WebsocketClose(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class InvokeWebsocketRequest(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: WebsocketFrame
    def __init__(self, frame: _Optional[_Union[WebsocketFrame, _Mapping]] = ...) -> None: ...

class InvokeWebsocketResponse(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: WebsocketFrame
    def __init__(self, frame: _Optional[_Union[WebsocketFrame, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("package_dir", "package_digest")
    PACKAGE_DIR_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    package_dir: str
    package_digest: str
    def __init__(self, package_dir: _Optional[str] = ..., package_digest: _Optional[str] = ...) -> None: ...

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

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: bytes
    def __init__(self, text: _Optional[bytes] = ...) -> None: ...
