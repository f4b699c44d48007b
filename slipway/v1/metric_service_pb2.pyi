import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetDeploymentMetricsRequest(_message.Message):
    __slots__ = ("deployment_id", "window", "step")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    window: _duration_pb2.Duration
    step: _duration_pb2.Duration
    def __init__(self, deployment_id: _Optional[str] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., step: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetDeploymentMetricsResponse(_message.Message):
    __slots__ = ("deployment_id", "step", "points", "latency_bucket_bounds_seconds")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKET_BOUNDS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    step: _duration_pb2.Duration
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    latency_bucket_bounds_seconds: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, deployment_id: _Optional[str] = ..., step: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., latency_bucket_bounds_seconds: _Optional[_Iterable[float]] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("start_time", "duration", "responses_2xx", "responses_4xx", "responses_5xx", "latency_p50_seconds", "latency_p90_seconds", "latency_p99_seconds", "latency_bucket_counts", "in_flight", "replicas_ready", "replicas_desired", "cold_starts")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_2XX_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_4XX_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_5XX_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P90_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_READY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_DESIRED_FIELD_NUMBER: _ClassVar[int]
    COLD_STARTS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    responses_2xx: int
    responses_4xx: int
    responses_5xx: int
    latency_p50_seconds: float
    latency_p90_seconds: float
    latency_p99_seconds: float
    latency_bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    in_flight: float
    replicas_ready: int
    replicas_desired: int
    cold_starts: int
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., responses_2xx: _Optional[int] = ..., responses_4xx: _Optional[int] = ..., responses_5xx: _Optional[int] = ..., latency_p50_seconds: _Optional[float] = ..., latency_p90_seconds: _Optional[float] = ..., latency_p99_seconds: _Optional[float] = ..., latency_bucket_counts: _Optional[_Iterable[int]] = ..., in_flight: _Optional[float] = ..., replicas_ready: _Optional[int] = ..., replicas_desired: _Optional[int] = ..., cold_starts: _Optional[int] = ...) -> None: ...
