import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    ROLLOUT_STATE_RELEASING: _ClassVar[RolloutState]
    ROLLOUT_STATE_RAMPING_UP: _ClassVar[RolloutState]
    ROLLOUT_STATE_PAUSED: _ClassVar[RolloutState]
    ROLLOUT_STATE_SUCCEEDED: _ClassVar[RolloutState]
    ROLLOUT_STATE_FAILED: _ClassVar[RolloutState]
    ROLLOUT_STATE_CANCELED: _ClassVar[RolloutState]
    ROLLOUT_STATE_ROLLED_BACK: _ClassVar[RolloutState]

class RolloutMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_MODE_UNSPECIFIED: _ClassVar[RolloutMode]
    ROLLOUT_MODE_IMMEDIATE: _ClassVar[RolloutMode]
    ROLLOUT_MODE_ROLLING: _ClassVar[RolloutMode]
ROLLOUT_STATE_UNSPECIFIED: RolloutState
ROLLOUT_STATE_RELEASING: RolloutState
ROLLOUT_STATE_RAMPING_UP: RolloutState
ROLLOUT_STATE_PAUSED: RolloutState
ROLLOUT_STATE_SUCCEEDED: RolloutState
ROLLOUT_STATE_FAILED: RolloutState
ROLLOUT_STATE_CANCELED: RolloutState
ROLLOUT_STATE_ROLLED_BACK: RolloutState
ROLLOUT_MODE_UNSPECIFIED: RolloutMode
ROLLOUT_MODE_IMMEDIATE: RolloutMode
ROLLOUT_MODE_ROLLING: RolloutMode

class RolloutStep(_message.Message):
    __slots__ = ("percent", "hold_seconds")
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    HOLD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    percent: int
    hold_seconds: float
    def __init__(self, percent: _Optional[int] = ..., hold_seconds: _Optional[float] = ...) -> None: ...

class RolloutPolicy(_message.Message):
    __slots__ = ("model_id", "environment", "mode", "max_surge_percent", "stabilization_seconds", "steps", "auto_rollback", "max_error_rate_increase_points", "max_p99_ratio", "latency_floor_seconds", "min_requests", "keep_previous_warm_seconds", "update_time")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_SURGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STABILIZATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_INCREASE_POINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_RATIO_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FLOOR_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KEEP_PREVIOUS_WARM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    environment: str
    mode: RolloutMode
    max_surge_percent: int
    stabilization_seconds: float
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStep]
    auto_rollback: bool
    max_error_rate_increase_points: float
    max_p99_ratio: float
    latency_floor_seconds: float
    min_requests: int
    keep_previous_warm_seconds: float
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, model_id: _Optional[str] = ..., environment: _Optional[str] = ..., mode: _Optional[_Union[RolloutMode, str]] = ..., max_surge_percent: _Optional[int] = ..., stabilization_seconds: _Optional[float] = ..., steps: _Optional[_Iterable[_Union[RolloutStep, _Mapping]]] = ..., auto_rollback: _Optional[bool] = ..., max_error_rate_increase_points: _Optional[float] = ..., max_p99_ratio: _Optional[float] = ..., latency_floor_seconds: _Optional[float] = ..., min_requests: _Optional[int] = ..., keep_previous_warm_seconds: _Optional[float] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RolloutFigures(_message.Message):
    __slots__ = ("requests", "errors", "error_rate", "p99_seconds")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    errors: int
    error_rate: float
    p99_seconds: float
    def __init__(self, requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ..., p99_seconds: _Optional[float] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("id", "model_id", "environment", "candidate_deployment_id", "previous_deployment_id", "state", "trigger", "message", "steps", "step_index", "candidate_percent", "candidate_step_figures", "previous_step_figures", "previous_total_figures", "create_time", "update_time", "end_time", "step_start_time", "keep_warm_until")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_STEP_FIGURES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STEP_FIGURES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TOTAL_FIGURES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_START_TIME_FIELD_NUMBER: _ClassVar[int]
    KEEP_WARM_UNTIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_id: str
    environment: str
    candidate_deployment_id: str
    previous_deployment_id: str
    state: RolloutState
    trigger: str
    message: str
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStep]
    step_index: int
    candidate_percent: int
    candidate_step_figures: RolloutFigures
    previous_step_figures: RolloutFigures
    previous_total_figures: RolloutFigures
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    step_start_time: _timestamp_pb2.Timestamp
    keep_warm_until: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., model_id: _Optional[str] = ..., environment: _Optional[str] = ..., candidate_deployment_id: _Optional[str] = ..., previous_deployment_id: _Optional[str] = ..., state: _Optional[_Union[RolloutState, str]] = ..., trigger: _Optional[str] = ..., message: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[RolloutStep, _Mapping]]] = ..., step_index: _Optional[int] = ..., candidate_percent: _Optional[int] = ..., candidate_step_figures: _Optional[_Union[RolloutFigures, _Mapping]] = ..., previous_step_figures: _Optional[_Union[RolloutFigures, _Mapping]] = ..., previous_total_figures: _Optional[_Union[RolloutFigures, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., keep_warm_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("model_id", "environment", "rollout_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    environment: str
    rollout_id: str
    def __init__(self, model_id: _Optional[str] = ..., environment: _Optional[str] = ..., rollout_id: _Optional[str] = ...) -> None: ...

class GetRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("model_id", "environment", "page_size", "page_token")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    environment: str
    page_size: int
    page_token: str
    def __init__(self, model_id: _Optional[str] = ..., environment: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts", "next_page_token")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    next_page_token: str
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PauseRolloutRequest(_message.Message):
    __slots__ = ("model_id", "environment", "request_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    environment: str
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., environment: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PauseRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class ResumeRolloutRequest(_message.Message):
    __slots__ = ("model_id", "environment", "request_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    environment: str
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., environment: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ResumeRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class CancelRolloutRequest(_message.Message):
    __slots__ = ("model_id", "environment", "request_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    environment: str
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., environment: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CancelRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class CompleteRolloutRequest(_message.Message):
    __slots__ = ("model_id", "environment", "request_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    environment: str
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., environment: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CompleteRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class RollbackEnvironmentRequest(_message.Message):
    __slots__ = ("model_id", "environment", "request_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    environment: str
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., environment: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RollbackEnvironmentResponse(_message.Message):
    __slots__ = ("rollout", "deployment_id")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    deployment_id: str
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ..., deployment_id: _Optional[str] = ...) -> None: ...

class GetRolloutPolicyRequest(_message.Message):
    __slots__ = ("model_id", "environment")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    environment: str
    def __init__(self, model_id: _Optional[str] = ..., environment: _Optional[str] = ...) -> None: ...

class GetRolloutPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: RolloutPolicy
    def __init__(self, policy: _Optional[_Union[RolloutPolicy, _Mapping]] = ...) -> None: ...

class UpdateRolloutPolicyRequest(_message.Message):
    __slots__ = ("policy", "update_mask", "request_id")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    policy: RolloutPolicy
    update_mask: _field_mask_pb2.FieldMask
    request_id: str
    def __init__(self, policy: _Optional[_Union[RolloutPolicy, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateRolloutPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: RolloutPolicy
    def __init__(self, policy: _Optional[_Union[RolloutPolicy, _Mapping]] = ...) -> None: ...
