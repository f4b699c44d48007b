"""Flags of the server commands (`slipway controller`, `gateway`, `up`) and the settings
they become; slipway/cli.py holds the commands themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from controller.ray_node_cache import DEFAULT_NODE_CACHE_BYTES
from slipway import data_plane
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES, LARGEST_MAX_REQUEST_BYTES
from slipway.tls import ServerTls


def flag(*names: str, **settings: Any) -> Callable:
    """A server flag: also read from its environment variable, both shown in --help."""
    return click.option(*names, show_envvar=True, **{"show_default": True, **settings})


def with_options(command: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        command = option(command)
    return command


host_option = flag(
    "--host",
    envvar="SLIPWAY_HOST",
    default="127.0.0.1",
)
log_level_option = flag(
    "--log-level",
    envvar="SLIPWAY_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
)

insecure_no_auth_option = flag(
    "--insecure-no-auth",
    envvar="SLIPWAY_INSECURE_NO_AUTH",
    is_flag=True,
    help="Accept every call without an API key. Anyone who reaches the ports controls the platform.",
    show_default=False,
)


def _otlp_endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from slipway.tracing import TracingError, check_endpoint

    try:
        return check_endpoint(value) if value else None
    except TracingError as exc:
        raise click.BadParameter(str(exc)) from None


otlp_endpoint_option = flag(
    "--otlp-endpoint",
    envvar="SLIPWAY_OTLP_ENDPOINT",
    default=None,
    callback=_otlp_endpoint,
    help="Export traces (OpenTelemetry, OTLP/gRPC) to http[s]://HOST:PORT, from the gateway and every replica; "
    "off when unset.",
    show_default=False,
)

max_request_bytes_option = flag(
    "--max-request-bytes",
    envvar="SLIPWAY_MAX_REQUEST_BYTES",
    type=click.IntRange(min=1, max=LARGEST_MAX_REQUEST_BYTES),
    default=DEFAULT_MAX_REQUEST_BYTES,
    help="Largest request body and model answer (a response, or one stream chunk) in bytes, in gateway and replicas.",
)


def server_options(command: Callable) -> Callable:
    options = [
        host_option,
        flag(
            "--port",
            envvar="SLIPWAY_CONTROLLER_PORT",
            type=int,
            default=7100,
        ),
        flag(
            "--controller-http-port",
            envvar="SLIPWAY_CONTROLLER_HTTP_PORT",
            type=int,
            default=7180,
            help="HTTP port of the controller: the management API as JSON over HTTP (Connect), /openapi.json.",
        ),
        flag(
            "--data-dir",
            envvar="SLIPWAY_DATA_DIR",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path(".slipway"),
        ),
        flag(
            "--database",
            envvar="SLIPWAY_DATABASE",
            default=None,
            callback=_database_url,
            show_default="sqlite:///<data-dir>/controller.db",
            help="Where lifecycle state lives: sqlite:///PATH (sqlite:////absolute/path) or "
            "postgresql://USER:PASSWORD@HOST:PORT/DBNAME (README: Choosing the database).",
        ),
        log_level_option,
        flag(
            "--lease-seconds",
            envvar="SLIPWAY_LEASE_SECONDS",
            type=click.FloatRange(min=0.2, max=600),
            default=5.0,
            help="How long the leader lease lasts (README: Running on more than one machine): a dead "
            "leader is replaced within about this long.",
        ),
        flag(
            "--lease-renew-seconds",
            envvar="SLIPWAY_LEASE_RENEW_SECONDS",
            type=click.FloatRange(min=0.05, max=300),
            default=1.0,
            help="How often the leader renews its lease and the other controllers try to take it; "
            "below --lease-seconds.",
        ),
        flag(
            "--autoscaling-time-scale",
            envvar="SLIPWAY_AUTOSCALING_TIME_SCALE",
            type=click.FloatRange(min=0.0001),
            default=1.0,
            help="Multiplies every autoscaling duration (window, scale-down delay); below 1 for demos and tests.",
        ),
        flag(
            "--wake-hold-seconds",
            envvar="SLIPWAY_WAKE_HOLD_SECONDS",
            type=click.FloatRange(min=0),
            default=10.0,
            help="How long a woken deployment keeps at least one replica.",
        ),
        flag(
            "--fork-replicas/--no-fork-replicas",
            envvar="SLIPWAY_FORK_REPLICAS",
            default=True,
            help="Fork replicas from a pre-imported model server (fast cold starts) instead of new interpreters.",
        ),
        flag(
            "--drain-seconds",
            envvar="SLIPWAY_DRAIN_SECONDS",
            type=click.FloatRange(min=0),
            default=30.0,
            help="How long a published replica being stopped may finish its requests in flight (raise it for long requests).",
        ),
        insecure_no_auth_option,
        flag(
            "--health-check-seconds",
            envvar="SLIPWAY_HEALTH_CHECK_SECONDS",
            type=click.FloatRange(min=0.01, max=3600),
            default=10.0,
            help="How often a replica asks a model that has is_healthy() (the first failure replaces the replica).",
        ),
        *LOG_OPTIONS,
        *ASYNC_OPTIONS,
        otlp_endpoint_option,
        flag(
            "--runtime",
            envvar="SLIPWAY_RUNTIME",
            type=click.Choice(["local", "ray"]),
            default="local",
            help="What runs replicas: local processes, or a Ray cluster (pip install 'slipway[ray]').",
        ),
        flag(
            "--ray-address",
            envvar="SLIPWAY_RAY_ADDRESS",
            default=None,
            help="The Ray cluster's address (host:port of its head) under --runtime ray; "
            "default: RAY_ADDRESS, else a cluster on this machine, else a new local one.",
            show_default=False,
        ),
        flag(
            "--ray-node-cache-bytes",
            envvar="SLIPWAY_RAY_NODE_CACHE_BYTES",
            type=click.IntRange(min=0, max=2**50),
            default=DEFAULT_NODE_CACHE_BYTES,
            help="Under --runtime ray: bytes of unpacked packages and environments a node keeps "
            "beyond those its running replicas use (the least recently used go first).",
        ),
    ]
    return isolation_options(with_options(command, options))


# Replica and build logs (controller/log_collector.py, replica/capture.py).
LOG_OPTIONS = [
    flag(
        "--log-retention-bytes",
        envvar="SLIPWAY_LOG_RETENTION_BYTES",
        type=click.IntRange(min=1024 * 1024),
        default=1024**3,
        help="Size of the logs kept (<data-dir>/logs.db); beyond it the oldest records go.",
    ),
    flag(
        "--log-retention-seconds",
        envvar="SLIPWAY_LOG_RETENTION_SECONDS",
        type=click.FloatRange(min=60),
        default=7 * 86400.0,
        help="Age of the oldest log record kept (of deleted deployments too).",
    ),
    flag(
        "--log-line-bytes",
        envvar="SLIPWAY_LOG_LINE_BYTES",
        type=click.IntRange(min=256, max=1024 * 1024),
        default=16 * 1024,
        help="Longest log line kept whole; a longer one is cut, with a note of how much.",
    ),
    flag(
        "--log-rate-bytes",
        envvar="SLIPWAY_LOG_RATE_BYTES",
        type=click.IntRange(min=1024, max=1024**3),
        default=1024 * 1024,
        help="Log bytes per second one replica may write (after a burst of 8 times as much); the rest is dropped and counted.",
    ),
]


# Async inference (controller/async_rules.py AsyncSettings).
ASYNC_OPTIONS = [
    flag(
        "--async-max-payload-bytes",
        envvar="SLIPWAY_ASYNC_MAX_PAYLOAD_BYTES",
        type=click.IntRange(min=1, max=256 * 1024 * 1024),
        default=4 * 1024 * 1024,
        help="Largest model input of one async request; a larger one is refused (413 ASYNC_PAYLOAD_TOO_LARGE).",
    ),
    flag(
        "--async-max-queued",
        envvar="SLIPWAY_ASYNC_MAX_QUEUED",
        type=click.IntRange(min=1, max=10_000_000),
        default=10_000,
        help="Most queued async requests per deployment; one more is refused (429 ASYNC_QUEUE_FULL).",
    ),
    flag(
        "--async-max-result-bytes",
        envvar="SLIPWAY_ASYNC_MAX_RESULT_BYTES",
        type=click.IntRange(min=1, max=256 * 1024 * 1024),
        default=4 * 1024 * 1024,
        help="Largest model answer stored; a larger one ends the request FAILED (ASYNC_RESULT_TOO_LARGE).",
    ),
    flag(
        "--async-retention-seconds",
        envvar="SLIPWAY_ASYNC_RETENTION_SECONDS",
        type=click.FloatRange(min=60),
        default=7 * 86400.0,
        help="How long a finished async request and its result are kept.",
    ),
    flag(
        "--webhook-allow-private-addresses",
        envvar="SLIPWAY_WEBHOOK_ALLOW_PRIVATE_ADDRESSES",
        is_flag=True,
        default=False,
        help="Let webhooks reach loopback, private and link-local addresses (internal services).",
    ),
    flag(
        "--webhook-allow-http",
        envvar="SLIPWAY_WEBHOOK_ALLOW_HTTP",
        is_flag=True,
        default=False,
        help="Accept plain http:// webhook endpoints (results then travel unencrypted).",
    ),
]


def _database_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from controller.store import BadDatabaseUrl, check_database_url

    try:
        return check_database_url(value) if value else None
    except BadDatabaseUrl as exc:
        raise click.BadParameter(str(exc)) from None


def _uid_range(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    from controller.isolation import parse_uid_range

    try:
        return parse_uid_range(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def isolation_options(command: Callable) -> Callable:
    """Whom replicas run as (controller/isolation.py)."""
    options = [
        flag(
            "--replica-user",
            envvar="SLIPWAY_REPLICA_USER",
            default="auto",
            help="auto: as root, each model's replicas run as a uid of their own (from --replica-uid-range); "
            "controller: as the controller's user; or a user name or uid every replica shares.",
        ),
        flag(
            "--replica-uid-range",
            envvar="SLIPWAY_REPLICA_UID_RANGE",
            default="200000-299999",
            callback=_uid_range,
            help="The uids (and gids) of per-model replica users: model number N runs as FIRST+N-1.",
        ),
        flag(
            "--replica-python",
            envvar="SLIPWAY_REPLICA_PYTHON",
            default=None,
            help="Interpreter of replicas without built requirements (default: the controller's); "
            "replica users must be able to read it.",
            show_default=False,
        ),
    ]
    return with_options(command, options)


def configure_logs(log_level: str) -> None:
    from slipway.logs import configure

    configure(log_level.upper())


def controller_settings(flags: Mapping[str, Any], tls: ServerTls | None) -> Any:
    """The controller's settings from the flags of `slipway controller` / `up` (click's params)."""
    from controller.async_rules import AsyncSettings
    from controller.autoscaler import AutoscalerConfig
    from controller.keys import KeySettings
    from controller.leader import LeaseSettings
    from controller.log_collector import CollectorSettings, LogSettings
    from controller.log_store import Retention
    from controller.server import ControllerSettings

    try:
        lease = LeaseSettings(flags["lease_seconds"], flags["lease_renew_seconds"])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return ControllerSettings(
        lease=lease,
        data_dir=flags["data_dir"],
        database=flags["database"] or "",
        host=flags["host"],
        port=flags["port"],
        http_port=flags["controller_http_port"],
        autoscaler=AutoscalerConfig(
            time_scale=flags["autoscaling_time_scale"], wake_hold_seconds=flags["wake_hold_seconds"]
        ),
        fork_replicas=flags["fork_replicas"],
        drain_seconds=flags["drain_seconds"],
        max_request_bytes=flags["max_request_bytes"],
        keys=KeySettings(require_api_keys=not flags["insecure_no_auth"]),
        tls=tls,
        replica_user=flags["replica_user"],
        replica_uid_range=flags["replica_uid_range"],
        replica_python=flags["replica_python"],
        health_check_seconds=flags["health_check_seconds"],
        logs=LogSettings(
            retention=Retention(flags["log_retention_bytes"], flags["log_retention_seconds"]),
            collector=CollectorSettings(max_line_bytes=flags["log_line_bytes"]),
            replica_rate_bytes=flags["log_rate_bytes"],
        ),
        otlp_endpoint=flags["otlp_endpoint"],
        runtime=flags["runtime"],
        ray_address=flags["ray_address"],
        async_requests=AsyncSettings(
            max_payload_bytes=flags["async_max_payload_bytes"],
            max_queued_per_deployment=flags["async_max_queued"],
            max_result_bytes=flags["async_max_result_bytes"],
            result_retention_seconds=flags["async_retention_seconds"],
            webhook_allow_private_addresses=flags["webhook_allow_private_addresses"],
            webhook_allow_http=flags["webhook_allow_http"],
        ),
        ray_node_cache_bytes=flags["ray_node_cache_bytes"],
    )


def gateway_settings(
    flags: Mapping[str, Any], tls: ServerTls | None, controller: str, controller_ca_file: Path | None
) -> Any:
    """A gateway's settings from the flags of `slipway gateway` / `up` (click's params)."""
    from gateway.http_limits import HttpLimits
    from gateway.server import GatewaySettings

    return GatewaySettings(
        controller_address=controller,
        host=flags["host"],
        grpc_port=flags["gateway_port"],
        http_port=flags["http_port"],
        replica_wait_seconds=flags["replica_wait"],
        max_request_bytes=flags["max_request_bytes"],
        require_api_keys=not flags["insecure_no_auth"],
        metrics=not flags["no_metrics"],
        http_limits=HttpLimits(
            max_connections=flags["max_http_connections"], max_buffered_body_bytes=flags["max_buffered_request_bytes"]
        ),
        tls=tls,
        controller_ca_file=controller_ca_file,
        otlp_endpoint=flags["otlp_endpoint"],
        data_plane=flags["data_plane"],
    )


MAX_GATEWAY_WORKERS = 64  # gateway/workers.py's MAX_WORKERS (not imported: a client command should not pay for it)


def gateway_workers_option(name: str) -> Callable:
    """`--workers` of `slipway gateway`, `--gateway-workers` of `slipway up`."""
    return flag(
        name,
        "workers" if name == "--workers" else "gateway_workers",
        envvar="SLIPWAY_GATEWAY_WORKERS",
        type=click.IntRange(min=1, max=MAX_GATEWAY_WORKERS),
        default=1,
        help="Gateway processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each a whole gateway; "
        "about one per core. A worker that dies is restarted.",
    )


def http_limit_default(name: str) -> int:
    """Imported only when a gateway starts: a client command should not pay for aiohttp."""
    from gateway.http_limits import HttpLimits

    return getattr(HttpLimits(), name)


def gateway_options(command: Callable) -> Callable:
    options = [
        flag(
            "--gateway-port",
            envvar="SLIPWAY_GATEWAY_PORT",
            type=int,
            default=7200,
            help="gRPC port of the gateway's InferenceService.",
        ),
        flag(
            "--http-port",
            envvar="SLIPWAY_HTTP_PORT",
            type=int,
            default=7280,
            help="HTTP port of the gateway.",
        ),
        flag(
            "--replica-wait",
            envvar="SLIPWAY_REPLICA_WAIT",
            type=click.FloatRange(min=0, min_open=True, max=3600),
            default=60.0,
            help="Seconds a request waits for a ready replica before 503.",
        ),
        flag(
            "--max-http-connections",
            envvar="SLIPWAY_MAX_HTTP_CONNECTIONS",
            type=click.IntRange(min=1),
            default=lambda: http_limit_default("max_connections"),
            help="Open HTTP connections the gateway keeps; one more is answered 503 and closed.",
        ),
        flag(
            "--max-buffered-request-bytes",
            envvar="SLIPWAY_MAX_BUFFERED_REQUEST_BYTES",
            type=click.IntRange(min=1),
            default=lambda: http_limit_default("max_buffered_body_bytes"),
            help="Request-body bytes all HTTP requests in flight may hold together; beyond, 503 GATEWAY_BUSY.",
        ),
        flag(
            "--data-plane",
            envvar="SLIPWAY_DATA_PLANE",
            type=click.Choice(data_plane.DATA_PLANES),
            default=data_plane.AUTO,
            help="native: HAProxy holds the gateway's ports and forwards inference straight to ready replicas, "
            "the Python gateway behind it for everything else (waking, refusals, other routes); python: the "
            "Python gateway alone; auto: native where haproxy is installed (and with one worker).",
        ),
        flag(
            "--no-metrics",
            envvar="SLIPWAY_NO_METRICS",
            is_flag=True,
            show_default=False,
            help="Keep no gateway metrics and serve no /metrics (to measure what metrics cost; bench/gateway.py).",
        ),
    ]
    return with_options(command, options)


def run_until_stopped(coroutine: Any) -> None:
    from controller.isolation import ReplicaUserError
    from controller.replica_runtime import RuntimeUnavailableError
    from controller.store import StoreOpenError

    try:
        asyncio.run(coroutine)
    except KeyboardInterrupt:
        click.echo("Stopped.", err=True)
    except (ReplicaUserError, StoreOpenError, RuntimeUnavailableError) as exc:
        raise click.ClickException(str(exc)) from None
