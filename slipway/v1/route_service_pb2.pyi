from slipway.v1 import key_service_pb2 as _key_service_pb2
from slipway.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRoutesRequest(_message.Message):
    __slots__ = ("gateway_id", "acknowledges")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGES_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    acknowledges: bool
    def __init__(self, gateway_id: _Optional[str] = ..., acknowledges: _Optional[bool] = ...) -> None: ...

class WatchRoutesResponse(_message.Message):
    __slots__ = ("version", "reset", "models", "deployments", "deleted_model_ids", "deleted_deployment_ids", "api_keys")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    DELETED_MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    DELETED_DEPLOYMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    version: int
    reset: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelRoute]
    deployments: _containers.RepeatedCompositeFieldContainer[DeploymentRoute]
    deleted_model_ids: _containers.RepeatedScalarFieldContainer[str]
    deleted_deployment_ids: _containers.RepeatedScalarFieldContainer[str]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKeyRoute]
    def __init__(self, version: _Optional[int] = ..., reset: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelRoute, _Mapping]]] = ..., deployments: _Optional[_Iterable[_Union[DeploymentRoute, _Mapping]]] = ..., deleted_model_ids: _Optional[_Iterable[str]] = ..., deleted_deployment_ids: _Optional[_Iterable[str]] = ..., api_keys: _Optional[_Iterable[_Union[ApiKeyRoute, _Mapping]]] = ...) -> None: ...

class ApiKeyRoute(_message.Message):
    __slots__ = ("key_id", "key_sha256", "scope", "model_ids", "expire_time", "revoked")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_sha256: bytes
    scope: _key_service_pb2.KeyScope
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    expire_time: float
    revoked: bool
    def __init__(self, key_id: _Optional[str] = ..., key_sha256: _Optional[bytes] = ..., scope: _Optional[_Union[_key_service_pb2.KeyScope, str]] = ..., model_ids: _Optional[_Iterable[str]] = ..., expire_time: _Optional[float] = ..., revoked: _Optional[bool] = ...) -> None: ...

class ModelRoute(_message.Message):
    __slots__ = ("model_id", "model_name", "production_deployment_id", "development_deployment_id", "environments")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVELOPMENT_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_name: str
    production_deployment_id: str
    development_deployment_id: str
    environments: _containers.RepeatedCompositeFieldContainer[EnvironmentRoute]
    def __init__(self, model_id: _Optional[str] = ..., model_name: _Optional[str] = ..., production_deployment_id: _Optional[str] = ..., development_deployment_id: _Optional[str] = ..., environments: _Optional[_Iterable[_Union[EnvironmentRoute, _Mapping]]] = ...) -> None: ...

class EnvironmentRoute(_message.Message):
    __slots__ = ("name", "deployments")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    deployments: _containers.RepeatedCompositeFieldContainer[WeightedDeployment]
    def __init__(self, name: _Optional[str] = ..., deployments: _Optional[_Iterable[_Union[WeightedDeployment, _Mapping]]] = ...) -> None: ...

class WeightedDeployment(_message.Message):
    __slots__ = ("deployment_id", "weight")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    weight: int
    def __init__(self, deployment_id: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class DeploymentRoute(_message.Message):
    __slots__ = ("deployment_id", "model_id", "name", "active", "state", "endpoints", "status_message")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    model_id: str
    name: str
    active: bool
    state: _resources_pb2.DeploymentState
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    status_message: str
    def __init__(self, deployment_id: _Optional[str] = ..., model_id: _Optional[str] = ..., name: _Optional[str] = ..., active: _Optional[bool] = ..., state: _Optional[_Union[_resources_pb2.DeploymentState, str]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., status_message: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("replica_id", "address", "token", "http_address")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    address: str
    token: str
    http_address: str
    def __init__(self, replica_id: _Optional[str] = ..., address: _Optional[str] = ..., token: _Optional[str] = ..., http_address: _Optional[str] = ...) -> None: ...

class ReportLoadRequest(_message.Message):
    __slots__ = ("gateway_id", "loads", "used_api_key_ids")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    LOADS_FIELD_NUMBER: _ClassVar[int]
    USED_API_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    loads: _containers.RepeatedCompositeFieldContainer[DeploymentLoad]
    used_api_key_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, gateway_id: _Optional[str] = ..., loads: _Optional[_Iterable[_Union[DeploymentLoad, _Mapping]]] = ..., used_api_key_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeploymentLoad(_message.Message):
    __slots__ = ("deployment_id", "in_flight", "requests_total", "queued", "average_concurrency", "responses_2xx", "responses_4xx", "responses_5xx", "latency_bucket_counts")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_2XX_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_4XX_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_5XX_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    in_flight: int
    requests_total: int
    queued: int
    average_concurrency: float
    responses_2xx: int
    responses_4xx: int
    responses_5xx: int
    latency_bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deployment_id: _Optional[str] = ..., in_flight: _Optional[int] = ..., requests_total: _Optional[int] = ..., queued: _Optional[int] = ..., average_concurrency: _Optional[float] = ..., responses_2xx: _Optional[int] = ..., responses_4xx: _Optional[int] = ..., responses_5xx: _Optional[int] = ..., latency_bucket_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class ReportLoadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AckRoutesRequest(_message.Message):
    __slots__ = ("gateway_id", "version")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    version: int
    def __init__(self, gateway_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class AckRoutesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WakeRouteRequest(_message.Message):
    __slots__ = ("gateway_id", "deployment_id")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    deployment_id: str
    def __init__(self, gateway_id: _Optional[str] = ..., deployment_id: _Optional[str] = ...) -> None: ...

class WakeRouteResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: _resources_pb2.DeploymentState
    def __init__(self, state: _Optional[_Union[_resources_pb2.DeploymentState, str]] = ...) -> None: ...
