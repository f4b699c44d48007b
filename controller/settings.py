"""The controller's settings: everything `slipway controller` and `slipway up` configure
(slipway/server_options.py maps their flags and variables onto these)."""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass, field

from controller.async_rules import AsyncSettings
from controller.autoscaler import AutoscalerConfig
from controller.connect_api import ConnectLimits
from controller.dashboard import Dashboard
from controller.domain import AutoscalingLimits
from controller.isolation import AUTO, DEFAULT_UID_RANGE
from controller.keys import KeySettings
from controller.leader import LeaseSettings
from controller.log_collector import LogSettings
from controller.metric_history import HistorySettings
from controller.packages import PackageLimits
from controller.ray_node_cache import DEFAULT_NODE_CACHE_BYTES
from controller.reconciler import ReconcilerSettings
from controller.secrets import SecretLimits
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES
from slipway.tls import ServerTls

log = logging.getLogger("slipway.controller")


@dataclass
class ControllerSettings:
    data_dir: pathlib.Path = pathlib.Path(".slipway")
    # Where lifecycle state lives (controller/store): sqlite:///PATH or postgresql://…;
    # empty means the embedded default, sqlite:///<data_dir>/controller.db.
    database: str = ""
    host: str = "127.0.0.1"
    port: int = 7100
    # The HTTP port: the management API as JSON over HTTP (Connect) and its /openapi.json.
    http_port: int = 7180
    connect: ConnectLimits = field(default_factory=ConnectLimits)
    drain_seconds: float = 30.0
    shutdown_grace_seconds: float = 10.0
    # Fork replicas from a pre-imported model server (fast cold starts) rather than exec a new interpreter.
    fork_replicas: bool = True
    # How long a replica's drain waits for every gateway to stop routing to it.
    unroute_timeout_seconds: float = 2.0
    autoscaling_limits: AutoscalingLimits = field(default_factory=AutoscalingLimits)
    reconciler: ReconcilerSettings = field(default_factory=ReconcilerSettings)
    # The leader lease (controller/leader.py): which of several controllers runs replicas.
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    autoscaler: AutoscalerConfig = field(default_factory=AutoscalerConfig)
    # Python environments built for package requirements (default <data_dir>/builds).
    builds_dir: pathlib.Path | None = None
    build_timeout_seconds: float = 1800.0
    package_limits: PackageLimits = field(default_factory=PackageLimits)
    # Largest request body and model answer a replica accepts (the gateway's setting of the same name).
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    keys: KeySettings = field(default_factory=KeySettings)
    # Serves the gRPC port with TLS when set (replicas stay on loopback plaintext).
    tls: ServerTls | None = None
    # How often replicas ask a model with is_healthy() whether it is healthy.
    health_check_seconds: float = 10.0
    # Replicas export traces over OTLP/gRPC here (slipway/tracing.py); off when unset.
    otlp_endpoint: str | None = None
    # Whom replicas run as (controller/isolation.py): `auto` (per-model uids from
    # replica_uid_range when the controller is root), `controller`, or one user's name or uid.
    replica_user: str = AUTO
    replica_uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    # The interpreter of replicas without a built environment (default: the controller's);
    # replicas that run as other users need one every user can read.
    replica_python: str | None = None
    secret_limits: SecretLimits = field(default_factory=SecretLimits)
    # Replica and build logs: retention, limits (controller/log_collector.py).
    logs: LogSettings = field(default_factory=LogSettings)
    # The in-memory history of deployments' figures (MetricService, the dashboard's charts).
    history: HistorySettings = field(default_factory=HistorySettings)
    # The web dashboard served at / on the HTTP port (its built files, web/dist by default).
    dashboard: Dashboard = field(default_factory=Dashboard)
    # What runs replicas (controller/replica_runtime.py): "local" processes, or a Ray cluster
    # at ray_address (None: the RAY_ADDRESS variable, else a cluster running on this machine, else a new one).
    runtime: str = "local"
    ray_address: str | None = None
    # Async inference: queue bounds, retention, webhook rules (controller/async_rules.py).
    async_requests: AsyncSettings = field(default_factory=AsyncSettings)
    # Under the Ray runtime: bytes of unpacked packages and environments each node keeps
    # beyond those its running replicas use (controller/ray_node_cache.py).
    ray_node_cache_bytes: int = DEFAULT_NODE_CACHE_BYTES

    def __post_init__(self) -> None:
        # Absolute: replicas run in directories of their own (a relative package path given
        # to a replica in its sandbox named nothing there).
        self.data_dir = pathlib.Path(self.data_dir).absolute()
