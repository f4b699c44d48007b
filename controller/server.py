"""Controller process: wires store, lifecycle, runtime and reconciler behind grpc.aio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controller.async_inference import ASYNC_QUEUE_SERVICE, WEBHOOK_SECRET_SERVICE, AsyncInference
from controller.autoscaler import Autoscaler
from controller.builds import BuildManager
from controller.compat import Machine
from controller.connect_api import ConnectApi, services_of
from controller.environment_ops import EnvironmentOps
from controller.environment_servicer import EnvironmentServicer
from controller.files import make_private
from controller.isolation import AUTO, ReplicaUsers, Sandboxes, resolve_replica_users
from controller.keys import INTERNAL_SERVICES, METHOD_SCOPES, KeyManager
from controller.leader import Leadership, LeaseLost
from controller.lifecycle import Lifecycle
from controller.log_collector import LogCollector
from controller.log_servicer import LogServicer, SourceResolver
from controller.log_store import SqliteLogStore
from controller.metric_history import MetricHistory
from controller.metric_servicer import MetricServicer, record_report
from controller.metrics import ControllerMetrics
from controller.metrics_http import MetricsEndpoint
from controller.openapi import openapi_document
from controller.packages import PackageStore
from controller.reconciler import Reconciler
from controller.replica_runtime import ReplicaHandle, ReplicaRuntime, RuntimeUnavailableError, require_runtime
from controller.rollout_servicer import RolloutServicer
from controller.rollouts import Rollouts
from controller.routes import LoadTracker, RouteBroadcaster
from controller.runtime import LocalProcessRuntime
from controller.secret_servicer import SecretServicer
from controller.secrets import KEY_FILENAME, SecretBox, Secrets, take_environment_secrets
from controller.servicers import DeploymentServicer, KeyServicer, ModelServicer, RouteServicer
from controller.settings import ControllerSettings
from controller.store import Change, Store, default_database_url, open_store
from slipway.auth import ApiKeyInterceptor, Authenticator, FailureGuard
from slipway.channels import KEEPALIVE_SERVER_OPTIONS
from slipway.internal_auth import INTERNAL_TOKEN_HEADER, TokenInterceptor, issue_internal_token
from slipway.process import wait_for_termination_signal
from slipway.status import RefuseUndecodableRequests
from slipway.tls import add_grpc_port, dialable_host, warn_if_exposed_without_tls
from slipway.v1 import (
    deployment_service_pb2,
    deployment_service_pb2_grpc,
    environment_service_pb2,
    environment_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
    log_service_pb2,
    log_service_pb2_grpc,
    metric_service_pb2,
    metric_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    rollout_service_pb2,
    rollout_service_pb2_grpc,
    route_service_pb2,
    route_service_pb2_grpc,
    secret_service_pb2,
    secret_service_pb2_grpc,
)

log = logging.getLogger("slipway.controller")

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
ROUTE_SERVICE = route_service_pb2.DESCRIPTOR.services_by_name["RouteService"].full_name
SERVICE_NAMES = (
    deployment_service_pb2.DESCRIPTOR.services_by_name["DeploymentService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    ROUTE_SERVICE,
    key_service_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    secret_service_pb2.DESCRIPTOR.services_by_name["SecretService"].full_name,
    log_service_pb2.DESCRIPTOR.services_by_name["LogService"].full_name,
    metric_service_pb2.DESCRIPTOR.services_by_name["MetricService"].full_name,
    environment_service_pb2.DESCRIPTOR.services_by_name["EnvironmentService"].full_name,
    ASYNC_QUEUE_SERVICE,
    WEBHOOK_SECRET_SERVICE,
    rollout_service_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name,
)
OPEN_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME})


class Controller:
    """A running controller. `await Controller.start(settings)`, then `await stop()`."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.port = 0
        self.http_port = 0
        self.store: Store
        self.reconciler: Reconciler
        self.async_inference: AsyncInference
        self.leadership: Leadership
        self.rollouts: Rollouts
        self.autoscaler: Autoscaler
        self.routes: RouteBroadcaster
        self.load: LoadTracker
        self.history = MetricHistory(settings.history)
        self.keys: KeyManager
        self.logs: SqliteLogStore
        self.log_servicer: LogServicer
        self.log_collector: LogCollector | None = None
        self._server: grpc.aio.Server
        self._health = health.aio.HealthServicer()
        self._loop_task: asyncio.Task | None = None
        self._lease_task: asyncio.Task | None = None
        self._routes_started = False
        self._loopback: grpc.aio.Channel | None = None
        self._loopback_dir: pathlib.Path | None = None
        self._http: web.AppRunner | None = None
        self.metrics = ControllerMetrics()
        self._metrics_endpoint: MetricsEndpoint
        # What gateways present on RouteService (kept in <data_dir>/internal.token).
        self.internal_token = ""

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{dialable_host(self.settings.host)}:{self.http_port}"

    @classmethod
    async def start(cls, settings: ControllerSettings) -> Controller:
        require_runtime(settings.runtime)
        self = cls(settings)
        data_dir = settings.data_dir
        python = settings.replica_python or sys.executable
        if settings.runtime == "ray":
            # Decided on each node, by the same rule (the Ray worker there is what changes users).
            replica_users = ReplicaUsers(*settings.replica_uid_range) if settings.replica_user == AUTO else None
        else:
            replica_users = resolve_replica_users(settings.replica_user, settings.replica_uid_range, python, data_dir)
        make_private(data_dir, traversable=replica_users is not None and settings.runtime != "ray")
        from_environment = take_environment_secrets(os.environ)
        self.store = await open_store(settings.database or default_database_url(data_dir))
        await self.store.follow_other_controllers()  # their writes reach watches and route streams
        log.info("state in %s", self.store.description)
        self.store.on_write = self.metrics.database_write_seconds.observe
        self.store.add_listener(self._note_touched)
        # Apart from the lifecycle database: log volume never holds up a lifecycle write.
        self.logs = await SqliteLogStore.open(data_dir / "logs.db", settings.logs.retention)
        self.internal_token = issue_internal_token(data_dir)
        box = SecretBox(data_dir / KEY_FILENAME)
        secrets = Secrets(self.store, box, from_environment, settings.secret_limits)
        await secrets.load()
        packages = PackageStore(data_dir / "packages", settings.package_limits)
        self.keys = KeyManager(self.store, settings.keys)
        await self.keys.start(data_dir)
        if not settings.keys.require_api_keys:
            log.warning("AUTHENTICATION IS OFF (--insecure-no-auth): anyone who reaches the controller controls it")
        self.autoscaler = Autoscaler(settings.autoscaler)
        self.leadership = Leadership(self.store, settings.lease, self._lead, self._follow)
        lifecycle = Lifecycle(
            self.store,
            packages,
            settings.autoscaling_limits,
            on_commit=lambda: self.reconciler.poke(),
            on_wake=self._wake,
            machine=lambda: Machine(
                secret_variables=secrets.available_variables(), accelerators=settings.runtime == "ray"
            ),
            leader_write=self.leadership.fenced_write,
        )
        # Rolling promotions: their steps are leader work, run by the reconciler, fenced.
        self.rollouts = Rollouts(
            self.store, on_commit=lambda: self.reconciler.poke(), fenced_write=self.leadership.fenced_write
        )
        self.routes = RouteBroadcaster(self.store, lambda deployment_id: self.reconciler.replicas_of(deployment_id))
        self.load = LoadTracker(
            on_report=lambda: self.reconciler.poke(),
            on_loads=self._on_loads,
        )
        self.store.add_listener(self.routes.on_store_change)
        try:
            self.reconciler = Reconciler(
                self.store,
                lifecycle,
                packages,
                lambda on_change: _runtime(settings, packages, on_change, python, replica_users),
                settings.reconciler,
                self.autoscaler,
                self.load,
                on_replica_change=self.routes.on_replica_change,
                before_stop=self._unroute,
                builds=BuildManager(
                    settings.builds_dir or data_dir / "builds",
                    on_change=lambda: self.reconciler.poke(),
                    on_event=lifecycle.observed.record_event,
                    python=python,
                    timeout_seconds=settings.build_timeout_seconds,
                    shared=replica_users is not None,
                    on_built=lambda outcome, seconds: self.metrics.build_seconds.labels(outcome).observe(seconds),
                ),
                secrets=secrets,
                replica_users=replica_users,
                on_observed=lambda deployment_id, desired, ready: self.history.record_replicas(
                    deployment_id, desired, ready, self.load.observe(deployment_id)[0], time.time()
                ),
                metrics=self.metrics,
                leadership=self.leadership,
                before_pass=self.rollouts.tick,
                replica_floor=self.rollouts.floor,
            )
        except RuntimeUnavailableError:
            # The runtime cannot run (its cluster unreachable): close what started, say why.
            await self.keys.stop()
            await self.logs.close()
            await self.store.close()
            raise
        self.metrics.watch(lambda: self.reconciler.replicas.values(), self.autoscaler.panicking)
        self.async_inference = AsyncInference(
            self.store,
            self.leadership,
            settings.async_requests,
            box,
            self.metrics.registry,
            self.reconciler.replicas_of,
            lambda deployment: packages.directory(deployment.package_digest),
            self.load,
            self._wake,
            settings.max_request_bytes,
        )
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *KEEPALIVE_SERVER_OPTIONS,
        ]
        internal_auth = TokenInterceptor(
            INTERNAL_TOKEN_HEADER, self.internal_token, [ROUTE_SERVICE, ASYNC_QUEUE_SERVICE], "INTERNAL"
        )
        authenticator = Authenticator(
            lambda: self.keys.records,
            FailureGuard(settings.keys.failures),
            on_accept=self.keys.note_used,
            enabled=settings.keys.require_api_keys,
        )
        self._metrics_endpoint = MetricsEndpoint(
            self.metrics, authenticator, lambda: list(self.reconciler.replicas.values())
        )
        interceptors = [
            self.metrics.interceptor(),
            internal_auth,
            ApiKeyInterceptor(authenticator, METHOD_SCOPES, OPEN_SERVICES | INTERNAL_SERVICES),
            RefuseUndecodableRequests(),
        ]
        self._server = grpc.aio.server(options=options, interceptors=interceptors)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(lifecycle), self._server)
        deployment_service_pb2_grpc.add_DeploymentServiceServicer_to_server(
            DeploymentServicer(lifecycle, self.reconciler.replicas_of, leading=lambda: self.leadership.leading),
            self._server,
        )
        environment_service_pb2_grpc.add_EnvironmentServiceServicer_to_server(
            EnvironmentServicer(EnvironmentOps(lifecycle)), self._server
        )
        route_service_pb2_grpc.add_RouteServiceServicer_to_server(
            RouteServicer(self.routes, self.load, lifecycle, self.keys, lambda: self.leadership.leading), self._server
        )
        key_service_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(self.keys), self._server)
        secret_service_pb2_grpc.add_SecretServiceServicer_to_server(SecretServicer(secrets), self._server)
        self.async_inference.add_to_server(self._server)
        self.log_servicer = LogServicer(self.logs, self.store)
        log_service_pb2_grpc.add_LogServiceServicer_to_server(self.log_servicer, self._server)
        metric_service_pb2_grpc.add_MetricServiceServicer_to_server(
            MetricServicer(self.history, lifecycle), self._server
        )
        rollout_service_pb2_grpc.add_RolloutServiceServicer_to_server(RolloutServicer(self.rollouts), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        warn_if_exposed_without_tls(settings.host, settings.tls, "the controller")
        self.port = add_grpc_port(self._server, f"{settings.host}:{settings.port}", settings.tls)
        # The Connect surface's way in: a Unix socket in a directory only this process's user
        # can enter, so the hop needs no TLS (and no certificate that names a loopback host).
        self._loopback_dir = pathlib.Path(tempfile.mkdtemp(prefix="slipway-controller-"))
        loopback_socket = f"unix:{self._loopback_dir / 'grpc.sock'}"
        self._server.add_insecure_port(loopback_socket)
        self.log_collector = LogCollector(
            self.logs,
            data_dir / "logs",
            (settings.builds_dir or data_dir / "builds") / "logs",
            SourceResolver(self.store),
            settings.logs.collector,
        )
        await self.log_collector.start()
        # The lone controller (or the first of several) leads at once: replicas are adopted
        # before the first route table is published.
        await self.leadership.step(force=self.store.description.startswith("sqlite:"))
        await self.routes.start()
        self._routes_started = True
        if self.leadership.leading:
            self._start_loop()
        self._lease_task = asyncio.create_task(self.leadership.run())
        await self._server.start()
        try:
            await self._start_http(loopback_socket)
        except BaseException:
            await self.stop()
            raise
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "controller listening",
            extra={
                "fields": {
                    "address": self.address,
                    "http": self.http_url,
                    "tls": settings.tls is not None,
                    "data_dir": str(data_dir),
                    "replica_users": _describe(replica_users)
                    + (
                        " (on each Ray node whose worker is root)"
                        if settings.runtime == "ray" and replica_users
                        else ""
                    ),
                    "runtime": settings.runtime,
                }
            },
        )
        return self

    async def _start_http(self, loopback_socket: str) -> None:
        """The HTTP app: Connect calls go through a local channel to this controller's own
        gRPC server, so they meet the same interceptors, rules and statuses as gRPC calls."""
        self._loopback = grpc.aio.insecure_channel(
            loopback_socket,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        # Internal services (the platform's own parts only) stay off the JSON surface.
        public = [name for name in SERVICE_NAMES if name not in INTERNAL_SERVICES]
        document = openapi_document(services_of(public), "Slipway management API", "v1")
        app = web.Application(client_max_size=self.settings.connect.max_request_bytes)

        async def openapi(_request: web.Request) -> web.Response:
            return web.json_response(document)

        app.router.add_get("/openapi.json", openapi)
        self.settings.dashboard.add_routes(app)
        self._metrics_endpoint.add_route(app)
        ConnectApi(self._loopback, public, self.settings.connect).add_routes(app)
        runner = web.AppRunner(app, shutdown_timeout=self.settings.shutdown_grace_seconds, access_log=None)
        await runner.setup()
        self._http = runner
        tls = self.settings.tls
        site = web.TCPSite(
            runner, self.settings.host, self.settings.http_port, ssl_context=tls.http_context() if tls else None
        )
        await site.start()
        self.http_port = runner.addresses[0][1]

    def _note_touched(self, change: Change) -> None:
        """Deployments whose metric series the reconciler checks (a reset: every one it has)."""
        self.metrics.touched.update(self.metrics.labels if change.reset else change.deployments)

    def _on_loads(self, request: route_service_pb2.ReportLoadRequest) -> None:
        """A gateway's load report: the metric history's answers, and rolling promotions' figures."""
        record_report(self.history, request, time.time())
        self.rollouts.record_report(request)

    def _wake(self, deployment_id: str) -> None:
        self.metrics.woken(deployment_id)
        self.autoscaler.wake(deployment_id, time.monotonic())
        self.reconciler.poke()

    async def _unroute(self, handle) -> None:
        """Before a replica drains: wait until no following gateway routes to it (past the
        timeout, a gateway that has not answered gets its request refused by the draining
        replica and retries it elsewhere)."""
        if not await self.routes.wait_unrouted(handle.id, handle.deployment_id, self.settings.unroute_timeout_seconds):
            log.warning("replica %s drains before every gateway acknowledged its removal", handle.id)

    async def _lead(self) -> None:
        """Elected: adopt the replicas recorded as running, then reconcile and autoscale."""
        await self.reconciler.adopt_existing()
        for handle in list(self.reconciler.replicas.values()):
            self.routes.on_replica_change(handle)
        await self.reconciler.runtime.prewarm()
        if self._routes_started:
            self._start_loop()

    def _start_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self.reconciler.run(adopt=False))
        self.async_inference.lead()

    async def _follow(self) -> None:
        """Deposed: stop reconciling; the replicas keep running for the new leader to adopt."""
        await self._stop_loop()
        self.reconciler.replicas.clear()
        await self.routes.end_streams()  # gateways move on to the new leader, keeping their tables

    async def _stop_loop(self) -> None:
        await self.async_inference.follow()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    async def stop(self) -> None:
        """Graceful: stop taking RPCs, finish in-flight ones, drain and stop replicas."""
        await self._health.enter_graceful_shutdown()
        try:
            if self._http is not None:
                await self._http.cleanup()
        finally:
            await self._server.stop(self.settings.shutdown_grace_seconds)
            if self._loopback is not None:
                await self._loopback.close()
            if self._loopback_dir is not None:
                shutil.rmtree(self._loopback_dir, ignore_errors=True)
        await self._stop_loop()
        # The lease is renewed until the replicas are stopped: every stop is fenced, and a
        # drain longer than the lease would otherwise be refused and leave replicas running.
        await self.reconciler.shutdown()
        # A replica whose start was interrupted by the shutdown has no handle to stop it (nor
        # a warm Ray actor whose creation was): stopped while the runtime can still reach
        # them, before it closes. Only the leader's: a follower sharing the data directory
        # must leave the leader's alone.
        if self.leadership.leading:
            with contextlib.suppress(LeaseLost):  # then they are the new leader's
                await self.reconciler.stop_orphans(known=set())
        await self.reconciler.runtime.close()
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        await self.routes.stop()
        await self.keys.stop()
        if self.log_collector is not None:
            await self.log_collector.stop()  # with the lines of the replicas that just stopped
        await self.logs.close()
        if self._lease_task is not None:
            await self.leadership.release()  # another controller takes over without waiting
        await self.store.close()
        log.info("controller stopped")


def _runtime(
    settings: ControllerSettings,
    packages: PackageStore,
    on_change: Callable[[ReplicaHandle], None],
    python: str,
    replica_users: ReplicaUsers | None,
) -> ReplicaRuntime:
    data_dir = settings.data_dir
    # What every replica is started with, whichever runtime runs it.
    replica_options: dict[str, Any] = {
        "drain_seconds": settings.drain_seconds,
        "max_request_bytes": settings.max_request_bytes,
        "health_check_seconds": settings.health_check_seconds,
        "log_line_bytes": settings.logs.collector.max_line_bytes,
        "log_rate_bytes": settings.logs.replica_rate_bytes,
        "otlp_endpoint": settings.otlp_endpoint,
    }
    if settings.runtime == "ray":
        from controller.ray_runtime import RayRuntime

        return RayRuntime(
            data_dir,
            packages.root,
            on_change,
            address=settings.ray_address,
            replica_user=settings.replica_user,
            uid_range=settings.replica_uid_range,
            node_cache_bytes=settings.ray_node_cache_bytes,
            **replica_options,
        )
    return LocalProcessRuntime(
        data_dir,
        packages.root,
        on_change,
        python=python,
        fork=settings.fork_replicas,
        **replica_options,
        sandboxes=Sandboxes(data_dir / "sandboxes") if replica_users is not None else None,
    )


def _describe(users: ReplicaUsers | None) -> str:
    if users is None:
        return "the controller's own"
    if users.shared is not None:
        return f"uid {users.shared.uid}"
    return f"one per model, uids {users.first_uid}-{users.last_uid}"


async def run_controller(settings: ControllerSettings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    controller = await Controller.start(settings)
    try:
        await wait_for_termination_signal()
    finally:
        await controller.stop()
