import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from slipway.v1 import rollout_service_pb2 as _rollout_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeploymentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_KIND_UNSPECIFIED: _ClassVar[DeploymentKind]
    DEPLOYMENT_KIND_DEVELOPMENT: _ClassVar[DeploymentKind]
    DEPLOYMENT_KIND_PUBLISHED: _ClassVar[DeploymentKind]

class DeploymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATE_UNSPECIFIED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_BUILDING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_BUILD_FAILED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_DEPLOYING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_DEPLOY_FAILED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_LOADING_MODEL: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_ACTIVE: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_UPDATING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_UNHEALTHY: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_SCALED_TO_ZERO: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_WAKING_UP: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_DEACTIVATING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_INACTIVE: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_FAILED: _ClassVar[DeploymentState]

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_STATE_STARTING: _ClassVar[ReplicaState]
    REPLICA_STATE_LOADING: _ClassVar[ReplicaState]
    REPLICA_STATE_READY: _ClassVar[ReplicaState]
    REPLICA_STATE_DRAINING: _ClassVar[ReplicaState]
DEPLOYMENT_KIND_UNSPECIFIED: DeploymentKind
DEPLOYMENT_KIND_DEVELOPMENT: DeploymentKind
DEPLOYMENT_KIND_PUBLISHED: DeploymentKind
DEPLOYMENT_STATE_UNSPECIFIED: DeploymentState
DEPLOYMENT_STATE_BUILDING: DeploymentState
DEPLOYMENT_STATE_BUILD_FAILED: DeploymentState
DEPLOYMENT_STATE_DEPLOYING: DeploymentState
DEPLOYMENT_STATE_DEPLOY_FAILED: DeploymentState
DEPLOYMENT_STATE_LOADING_MODEL: DeploymentState
DEPLOYMENT_STATE_ACTIVE: DeploymentState
DEPLOYMENT_STATE_UPDATING: DeploymentState
DEPLOYMENT_STATE_UNHEALTHY: DeploymentState
DEPLOYMENT_STATE_SCALED_TO_ZERO: DeploymentState
DEPLOYMENT_STATE_WAKING_UP: DeploymentState
DEPLOYMENT_STATE_DEACTIVATING: DeploymentState
DEPLOYMENT_STATE_INACTIVE: DeploymentState
DEPLOYMENT_STATE_FAILED: DeploymentState
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_STATE_STARTING: ReplicaState
REPLICA_STATE_LOADING: ReplicaState
REPLICA_STATE_READY: ReplicaState
REPLICA_STATE_DRAINING: ReplicaState

class Model(_message.Message):
    __slots__ = ("id", "name", "production_deployment_id", "development_deployment_id", "promoting_deployment_id", "create_time", "update_time", "delete_time", "deployment_count", "rollouts")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVELOPMENT_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMOTING_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    production_deployment_id: str
    development_deployment_id: str
    promoting_deployment_id: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    delete_time: _timestamp_pb2.Timestamp
    deployment_count: int
    rollouts: _containers.RepeatedCompositeFieldContainer[ModelRollout]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., production_deployment_id: _Optional[str] = ..., development_deployment_id: _Optional[str] = ..., promoting_deployment_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deployment_count: _Optional[int] = ..., rollouts: _Optional[_Iterable[_Union[ModelRollout, _Mapping]]] = ...) -> None: ...

class ModelRollout(_message.Message):
    __slots__ = ("environment", "rollout_id", "state", "candidate_deployment_id", "previous_deployment_id", "candidate_percent", "message")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    environment: str
    rollout_id: str
    state: _rollout_service_pb2.RolloutState
    candidate_deployment_id: str
    previous_deployment_id: str
    candidate_percent: int
    message: str
    def __init__(self, environment: _Optional[str] = ..., rollout_id: _Optional[str] = ..., state: _Optional[_Union[_rollout_service_pb2.RolloutState, str]] = ..., candidate_deployment_id: _Optional[str] = ..., previous_deployment_id: _Optional[str] = ..., candidate_percent: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class AutoscalingSettings(_message.Message):
    __slots__ = ("min_replica", "max_replica", "autoscaling_window", "scale_down_delay", "concurrency_target", "target_utilization_percentage")
    MIN_REPLICA_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICA_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_DELAY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_UTILIZATION_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    min_replica: int
    max_replica: int
    autoscaling_window: int
    scale_down_delay: int
    concurrency_target: int
    target_utilization_percentage: int
    def __init__(self, min_replica: _Optional[int] = ..., max_replica: _Optional[int] = ..., autoscaling_window: _Optional[int] = ..., scale_down_delay: _Optional[int] = ..., concurrency_target: _Optional[int] = ..., target_utilization_percentage: _Optional[int] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("id", "model_id", "name", "kind", "is_production", "active", "state", "status_message", "autoscaling_settings", "package_digest", "desired_replicas", "ready_replicas", "create_time", "update_time", "delete_time", "source_deployment_id", "revision", "replicas", "environment", "promoting_environment")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IS_PRODUCTION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    PROMOTING_ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_id: str
    name: str
    kind: DeploymentKind
    is_production: bool
    active: bool
    state: DeploymentState
    status_message: str
    autoscaling_settings: AutoscalingSettings
    package_digest: str
    desired_replicas: int
    ready_replicas: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    delete_time: _timestamp_pb2.Timestamp
    source_deployment_id: str
    revision: int
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    environment: str
    promoting_environment: str
    def __init__(self, id: _Optional[str] = ..., model_id: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[DeploymentKind, str]] = ..., is_production: _Optional[bool] = ..., active: _Optional[bool] = ..., state: _Optional[_Union[DeploymentState, str]] = ..., status_message: _Optional[str] = ..., autoscaling_settings: _Optional[_Union[AutoscalingSettings, _Mapping]] = ..., package_digest: _Optional[str] = ..., desired_replicas: _Optional[int] = ..., ready_replicas: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_deployment_id: _Optional[str] = ..., revision: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., environment: _Optional[str] = ..., promoting_environment: _Optional[str] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("id", "address", "state", "pid", "start_time", "revision")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    state: ReplicaState
    pid: int
    start_time: _timestamp_pb2.Timestamp
    revision: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., pid: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("model_id", "deployment_id", "deployment_name", "replica_seconds", "replica_starts", "deployment_deleted", "days", "environment")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_STARTS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_DELETED_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    deployment_id: str
    deployment_name: str
    replica_seconds: float
    replica_starts: int
    deployment_deleted: bool
    days: _containers.RepeatedCompositeFieldContainer[DailyUsage]
    environment: str
    def __init__(self, model_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., deployment_name: _Optional[str] = ..., replica_seconds: _Optional[float] = ..., replica_starts: _Optional[int] = ..., deployment_deleted: _Optional[bool] = ..., days: _Optional[_Iterable[_Union[DailyUsage, _Mapping]]] = ..., environment: _Optional[str] = ...) -> None: ...

class DailyUsage(_message.Message):
    __slots__ = ("date", "replica_seconds", "replica_starts")
    DATE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_STARTS_FIELD_NUMBER: _ClassVar[int]
    date: str
    replica_seconds: float
    replica_starts: int
    def __init__(self, date: _Optional[str] = ..., replica_seconds: _Optional[float] = ..., replica_starts: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "create_time", "model_id", "deployment_id", "type", "message", "environment")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    create_time: _timestamp_pb2.Timestamp
    model_id: str
    deployment_id: str
    type: str
    message: str
    environment: str
    def __init__(self, sequence: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., environment: _Optional[str] = ...) -> None: ...
