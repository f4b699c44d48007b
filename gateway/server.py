"""Gateway process: route follower, forwarder, gRPC InferenceService and HTTP front."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway import auth, grpc_api
from gateway.async_api import AsyncGrpcApi, AsyncRequests, add_http_routes
from gateway.errors import GatewayError, error_info_reason
from gateway.follower import RouteFollower
from gateway.forwarder import Forwarder
from gateway.http_api import PREFIXES, build_app
from gateway.http_limits import BodyReader, HttpLimits, LimitedSite
from gateway.metrics import GatewayMetrics
from gateway.native.setup import native_data_plane
from slipway import data_plane, tracing
from slipway.auth import ApiKeyInterceptor, Authenticator, FailureGuard, FailureLimits
from slipway.internal_auth import INTERNAL_TOKEN_HEADER, TokenFileError, read_token_file
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES, grpc_message_options
from slipway.process import wait_event, wait_for_termination_signal
from slipway.tls import ServerTls, add_grpc_port, read_ca, warn_if_exposed_without_tls
from slipway.v1 import resources_pb2
from slipway.v1 import route_service_pb2 as rt
from slipway.v1 import route_service_pb2_grpc as rt_grpc

log = logging.getLogger("slipway.gateway")

WAKE_INTERVAL_SECONDS = 0.25


@dataclass(frozen=True)
class GrpcLimits:
    """What one client may hold on the gateway's gRPC server (grpc's own server options)."""

    # Calls in flight on the whole server; one more is refused RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 1000
    # Calls in flight on one connection; more wait on the client until one ends.
    max_concurrent_streams: int = 100
    # A connection with no call in flight for this long is closed (GOAWAY).
    max_connection_idle_seconds: float = 300.0
    # A connection is asked to reconnect after this long; calls in flight then get
    # `max_connection_age_grace_seconds` to finish (by default the request timeout).
    max_connection_age_seconds: float = 1800.0
    max_connection_age_grace_seconds: float | None = None
    # The server pings a connection this often and closes it without an answer in
    # `keepalive_timeout_seconds`: a vanished client's calls do not linger.
    keepalive_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    # Clients may send keepalive pings this often; one that pings more often is
    # disconnected (GOAWAY too_many_pings, grpc's ping-strike rule).
    min_client_ping_interval_seconds: float = 60.0

    def server_options(self, request_timeout_seconds: float) -> list[tuple[str, int]]:
        grace = self.max_connection_age_grace_seconds
        return [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_connection_idle_ms", _ms(self.max_connection_idle_seconds)),
            ("grpc.max_connection_age_ms", _ms(self.max_connection_age_seconds)),
            ("grpc.max_connection_age_grace_ms", _ms(request_timeout_seconds if grace is None else grace)),
            ("grpc.keepalive_time_ms", _ms(self.keepalive_seconds)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout_seconds)),
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(self.min_client_ping_interval_seconds)),
        ]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def new_gateway_id() -> str:
    """Unique per gateway process (host and pid for the operator reading logs)."""
    return f"gw-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class GatewaySettings:
    # Comma-separated controllers (`--controller host:port,host:port`): followed one at a time, in order.
    controller_address: str = "127.0.0.1:7100"
    host: str = "127.0.0.1"
    grpc_port: int = 7200
    http_port: int = 7280
    gateway_id: str = field(default_factory=lambda: new_gateway_id())
    # Longest a request waits for a ready replica (a deployment starting or waking).
    replica_wait_seconds: float = 60.0
    # Most requests that may wait for one deployment to have a ready replica; more get 429.
    max_queued_per_deployment: int = 100
    # Deadline for a forwarded request when the caller sets none (or a longer one).
    request_timeout_seconds: float = 600.0
    load_report_seconds: float = 1.0
    shutdown_grace_seconds: float = 10.0
    # Largest request body (and model answer: a response, or one chunk of a stream), over HTTP and gRPC.
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    grpc_limits: GrpcLimits = field(default_factory=GrpcLimits)
    # Wait (at most this long) for the route table before listening: a worker of `--workers N`
    # (re)starting next to others must not take connections it can only answer 503. 0: listen first.
    sync_before_listening_seconds: float = 0.0
    # Listen with SO_REUSEPORT, sharing both ports with the other workers of `--workers N`.
    # Off otherwise, so a second gateway on a taken port fails to start (grpc's own default is on).
    reuse_port: bool = False
    # Serves the gRPC and HTTP ports with TLS when set.
    tls: ServerTls | None = None
    # Verifies a controller that serves TLS (PEM CA file); plaintext to the controller when unset.
    controller_ca_file: Path | None = None
    # The controller's internal token (RouteService accepts nothing else): given in-process by
    # `slipway up`, else read from the file the controller writes (<data-dir>/internal.token).
    internal_token: str = field(default="", repr=False)
    internal_token_file: Path | None = None
    # Traces exported over OTLP/gRPC here (slipway/tracing.py); off when unset.
    otlp_endpoint: str | None = None
    # slipway/data_plane.py: python, native (HAProxy on the public ports), or auto.
    data_plane: str = "python"
    # Native data plane: deployments HAProxy can route to directly (each takes one slot pair of
    # backends); one more stays on the Python path, logged once.
    native_slots: int = 64

    def resolved_internal_token(self) -> str:
        if self.internal_token:
            return self.internal_token
        if self.internal_token_file is None:
            raise TokenFileError("the gateway needs the controller's internal token (--internal-token-file)")
        return read_token_file(Path(self.internal_token_file))

    # False (--insecure-no-auth): inference is open to anyone who reaches the gateway.
    require_api_keys: bool = True
    key_failures: FailureLimits = field(default_factory=FailureLimits)
    # False (--no-metrics, for measuring their cost only): no metrics, and no GET /metrics.
    metrics: bool = True


OPEN_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME})


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._traced = False  # this gateway turned tracing on (start) and turns it off (stop)
        self._internal_metadata = ((INTERNAL_TOKEN_HEADER, settings.resolved_internal_token()),)
        controller_ca = None if settings.controller_ca_file is None else read_ca(settings.controller_ca_file)
        self.follower = RouteFollower(
            settings.controller_address, settings.gateway_id, self._internal_metadata, controller_ca
        )
        self.metrics = GatewayMetrics(lambda: self.follower.index, enabled=settings.metrics)
        self.forwarder = Forwarder(
            self.follower,
            settings.replica_wait_seconds,
            settings.max_queued_per_deployment,
            self._wake_for_request,
            settings.max_request_bytes,
            self.metrics,
        )
        self._used_keys: set[str] = set()
        self.authenticator = Authenticator(
            lambda: self.follower.index.api_keys if self.follower.synced.is_set() else None,
            FailureGuard(settings.key_failures),
            on_accept=self._used_keys.add,
            enabled=settings.require_api_keys,
            on_refuse=self.metrics.refused,
        )
        self.async_requests = AsyncRequests(self.follower, self._internal_metadata, self.resolve)
        self._wakes_sent: dict[str, float] = {}
        self._waking: set[str] = set()
        self.grpc_port = 0
        self.http_port = 0
        self._health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task] = []
        # HAProxy on the public ports (gateway/native/), or None: the Python data plane.
        self.native = native_data_plane(settings, lambda: self.follower.index, self.forwarder.loads, self.metrics)
        if self.native is not None:
            self.follower.on_applied = self.native.apply
        self._grpc: grpc.aio.Server
        self._http: web.AppRunner
        self.http_bodies: BodyReader
        self.http_site: LimitedSite

    def resolve(self, model_ref: str, deployment_id: str, environment: str, request_id: str = "") -> rt.DeploymentRoute:
        if not self.follower.synced.is_set():
            raise GatewayError(
                grpc.StatusCode.UNAVAILABLE,
                "ROUTES_UNAVAILABLE",
                f"the gateway has no route table yet (controller {self.settings.controller_address} unreachable)",
            )
        return auth.require_model_access(self.follower.index.resolve(model_ref, deployment_id, environment, request_id))

    async def wake(self, deployment_id: str) -> dict:
        """Asks the controller to wake a deployment (the caller's key was checked for it when
        its target was resolved)."""
        channel = self.follower.channel
        if channel is None:
            raise GatewayError(
                grpc.StatusCode.UNAVAILABLE,
                "CONTROLLER_UNAVAILABLE",
                f"the gateway follows no controller now (tried {self.settings.controller_address})",
            )
        try:
            response = await rt_grpc.RouteServiceStub(channel).WakeRoute(
                rt.WakeRouteRequest(gateway_id=self.settings.gateway_id, deployment_id=deployment_id),
                timeout=10,
                metadata=self._internal_metadata,
            )
        except grpc.aio.AioRpcError as error:
            reason = error_info_reason(error) or "WAKE_FAILED"
            raise GatewayError(error.code(), reason, error.details() or error.code().name) from None
        return {"deployment_id": deployment_id, "state": resources_pb2.DeploymentState.Name(response.state)}

    def _wake_for_request(self, deployment: rt.DeploymentRoute) -> None:
        """A request is waiting for a deployment with no ready replica: ask the controller to
        wake it now rather than at the next load report (one call in flight per deployment,
        at most four a second)."""
        now = time.monotonic()
        deployment_id = deployment.deployment_id
        if deployment_id in self._waking or now - self._wakes_sent.get(deployment_id, -1.0) < WAKE_INTERVAL_SECONDS:
            return
        self._wakes_sent[deployment_id] = now
        self._waking.add(deployment_id)
        task = asyncio.get_running_loop().create_task(self.wake(deployment_id))

        def done(task: asyncio.Task) -> None:
            self._waking.discard(deployment_id)
            if not task.cancelled():
                task.exception()  # retrieved: a failed wake is retried by the next request, not logged

        task.add_done_callback(done)

    @classmethod
    async def start(cls, settings: GatewaySettings) -> Gateway:
        self = cls(settings)
        self._traced = tracing.configure(
            "slipway-gateway", settings.otlp_endpoint, {"slipway.gateway_id": settings.gateway_id}
        )
        if settings.sync_before_listening_seconds > 0:
            self._start_following()
            await wait_event(self.follower.synced, settings.sync_before_listening_seconds)
        try:
            await self._listen()
        except BaseException:
            if self.native is not None:
                await self.native.stop()
            await self._stop_tasks()
            raise
        if not self._tasks:  # once both ports are ours: a gateway that cannot listen leaves nothing running
            self._start_following()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(grpc_api.SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "gateway listening",
            extra={
                "fields": {
                    "grpc": f"{settings.host}:{self.grpc_port}",
                    "http": f"{settings.host}:{self.http_port}",
                    "controller": settings.controller_address,
                    "gateway_id": settings.gateway_id,
                    "tls": settings.tls is not None,
                    "data_plane": data_plane.PYTHON if self.native is None else data_plane.NATIVE,
                }
            },
        )
        return self

    def _start_following(self) -> None:
        self._tasks.append(asyncio.create_task(self.follower.run()))
        self._tasks.append(asyncio.create_task(self._report_load()))

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self) -> None:
        """The Python servers on the public ports; in native mode on internal loopback ports
        (plain text, ephemeral), with HAProxy on the public ones in front of them."""
        settings = self.settings
        native = self.native is not None
        host = "127.0.0.1" if native else settings.host
        tls = None if native else settings.tls
        if not settings.require_api_keys:
            log.warning("AUTHENTICATION IS OFF (--insecure-no-auth): anyone who reaches the gateway calls every model")
        self._grpc = grpc.aio.server(
            options=[
                *grpc_message_options(settings.max_request_bytes),
                *settings.grpc_limits.server_options(settings.request_timeout_seconds),
                ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
            ],
            maximum_concurrent_rpcs=settings.grpc_limits.max_concurrent_rpcs,
            interceptors=[ApiKeyInterceptor(self.authenticator, auth.METHOD_SCOPES, OPEN_SERVICES, forwarded=native)],
        )
        api = grpc_api.InferenceApi(self.forwarder, self.resolve, settings.request_timeout_seconds)
        self._grpc.add_generic_rpc_handlers((api.handler(), AsyncGrpcApi(self.async_requests).handler()))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (grpc_api.SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        warn_if_exposed_without_tls(settings.host, settings.tls, "the gateway")
        self.grpc_port = add_grpc_port(self._grpc, f"{host}:{0 if native else settings.grpc_port}", tls)
        await self._grpc.start()

        self.http_bodies = BodyReader(settings.http_limits, settings.max_request_bytes)
        app = build_app(
            self.forwarder,
            self.resolve,
            self.wake,
            settings.request_timeout_seconds,
            self.http_bodies,
            auth.http_middleware(self.authenticator, forwarded=native),
            self.metrics,
        )
        add_http_routes(app, self.async_requests, self.http_bodies, PREFIXES)
        # handler_cancellation: a client that disconnects cancels its call to the replica, so
        # the model stops (and can see it, as Truss's request.is_disconnected()).
        self._http = web.AppRunner(app, shutdown_timeout=settings.shutdown_grace_seconds, handler_cancellation=True)
        await self._http.setup()
        ssl_context = None if tls is None else tls.http_context()
        self.http_site = LimitedSite(
            self._http,
            host,
            0 if native else settings.http_port,
            settings.http_limits,
            ssl_context,
            settings.reuse_port and not native,
        )
        await self.http_site.start()
        self.http_port = self._http.addresses[0][1]
        if self.native is not None:
            await self.native.start(self.grpc_port, self.http_port)
            self.grpc_port, self.http_port = self.native.grpc_port, self.native.http_port

    async def _report_load(self) -> None:
        """To the controller the follower follows; dropped while it follows none."""
        while True:
            await asyncio.sleep(self.settings.load_report_seconds)
            self.forwarder.prune()
            self.metrics.prune()
            channel = self.follower.channel
            if channel is None:
                continue
            used_keys = sorted(self._used_keys)
            self._used_keys.clear()
            request = rt.ReportLoadRequest(
                gateway_id=self.settings.gateway_id, loads=self.forwarder.load_report(), used_api_key_ids=used_keys
            )
            with contextlib.suppress(grpc.aio.AioRpcError):
                await rt_grpc.RouteServiceStub(channel).ReportLoad(
                    request, timeout=self.settings.load_report_seconds, metadata=self._internal_metadata
                )

    async def stop(self) -> None:
        """Graceful: stop accepting, let in-flight requests finish, then close."""
        await self._health.enter_graceful_shutdown()
        try:
            if self.native is not None:  # first: its requests in flight may be on their way through Python
                await self.native.stop()
        finally:
            await asyncio.gather(self._grpc.stop(self.settings.shutdown_grace_seconds), self._http.cleanup())
            await self._stop_tasks()
        await self.forwarder.close()
        if self._traced:
            tracing.shutdown()
        log.info("gateway stopped")


async def run_gateway(settings: GatewaySettings) -> None:
    gateway = await Gateway.start(settings)
    try:
        await wait_for_termination_signal()
    finally:
        await gateway.stop()
