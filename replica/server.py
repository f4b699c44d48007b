"""The replica's lifecycle: bind, report, load the model, serve, drain."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import pathlib
import signal
import socket
import sys
import time
import traceback
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from replica import direct
from replica.calls import ModelCalls
from replica.loader import describe_failure, load_model, model_traceback, prepare_process
from replica.log import Logger
from replica.metrics import METRICS
from replica.package import PackageConfig, load_package_config
from replica.predictor import ModelError, Predictor
from replica.reload import ModelReloader
from replica.servicer import ReplicaServicer
from replica.state_file import FAILED, LOADING, READY, UNHEALTHY, StateFile
from replica.threads import ModelThreads
from slipway import tracing
from slipway.internal_auth import REPLICA_TOKEN_HEADER, TokenInterceptor
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES, replica_receive_options
from slipway.v1 import replica_service_pb2, replica_service_pb2_grpc

HTTP_MODULE = "replica.direct_http"
SERVICE_NAME = replica_service_pb2.DESCRIPTOR.services_by_name["ReplicaService"].full_name
EXIT_OK = 0
EXIT_MODEL_FAILED = 3
# The model's is_healthy() said no (the state file says why): the controller replaces the replica.
EXIT_UNHEALTHY = 4
# Threads beyond predict_concurrency, for load() and for generator cleanup.
SPARE_THREADS = 4


@dataclasses.dataclass(frozen=True)
class Options:
    package: pathlib.Path
    state_file: pathlib.Path
    host: str = "127.0.0.1"
    port: int = 0
    replica_id: str | None = None
    drain_seconds: float = 30.0
    # On shutdown, new calls are still served this long before they are refused.
    late_arrival_seconds: float = 0.25
    # Largest request body and model answer (a response, or one chunk of a stream).
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # Every ReplicaService call must carry it (x-slipway-replica-token).
    token: str = dataclasses.field(default="", repr=False)
    # Only a development replica accepts Reload, of packages under packages_root only.
    development: bool = False
    packages_root: pathlib.Path | None = None
    # How often a model with is_healthy() is asked; the first "no" (False, or an error, or no
    # answer within this time) takes the replica out of service and ends it with EXIT_UNHEALTHY.
    health_check_seconds: float = 10.0
    # Bounds of the captured log (replica/capture.py).
    log_line_bytes: int = 16 * 1024
    log_rate_bytes: int = 1024 * 1024
    # Traces exported over OTLP/gRPC (slipway/tracing.py), with what this replica serves.
    otlp_endpoint: str | None = None
    # What it serves: a direct call (replica/direct.py) naming another target is refused.
    deployment_id: str = ""
    model_id: str = ""
    model_name: str = ""
    # The HTTP predict route's port (0 picks a free one), and the longest a direct call runs.
    http_port: int = 0
    request_timeout_seconds: float = direct.DEFAULT_REQUEST_TIMEOUT_SECONDS


class Replica:
    def __init__(self, options: Options, log: Logger) -> None:
        self._options = options
        self._log = log
        self._state = StateFile(options.state_file, options.replica_id)
        self._stop = asyncio.Event()
        self._unhealthy = False
        self.threads: ModelThreads | None = None

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code for the process."""
        try:
            config = load_package_config(self._options.package)
        except ValueError as exc:
            return self._fail("package_invalid", exc)
        prepare_process(config)
        tracing.configure(
            "slipway-replica",
            self._options.otlp_endpoint,
            {
                tracing.REPLICA_ID: self._options.replica_id or "",
                tracing.DEPLOYMENT_ID: self._options.deployment_id,
                tracing.MODEL_ID: self._options.model_id,
                tracing.MODEL_NAME: config.model_name or "",
            },
        )
        self.threads = ModelThreads(config.predict_concurrency + SPARE_THREADS)

        server, servicer, health_servicer = await self._build_server()
        try:
            self._state.port = server.add_insecure_port(f"{self._options.host}:{self._options.port}")
        except RuntimeError as exc:
            return self._fail("bind_failed", exc)
        await server.start()
        try:
            http_socket = self._bind_http()
        except OSError as exc:
            await _stop_server(server)
            self._state.port = None  # as for a gRPC port that cannot be bound
            return self._fail("bind_failed", exc)
        http = HttpRoute(http_socket, servicer.calls, self._options, self._log)
        # Before LOADING is reported: a stop signal sent once the state file says so must drain.
        self._install_signal_handlers()
        self._state.write(LOADING)
        self._log.info(
            "listening",
            host=self._options.host,
            port=self._state.port,
            http_port=self._state.http_port,
            model_name=config.model_name,
        )

        predictor = await self._load(config)
        if predictor is None:
            if self._stop.is_set():
                await self._drain(server, servicer, health_servicer, http)
                return EXIT_OK
            await http.stop()
            await _stop_server(server)
            return EXIT_MODEL_FAILED

        servicer.attach(predictor)
        servicer.enable_reload(
            ModelReloader(config, self.threads, servicer.attach, self._log, self._options.max_request_bytes)
        )
        for service in ("", SERVICE_NAME):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._state.write(READY)
        self._log.info("ready")

        checking = asyncio.create_task(self._watch_health(servicer))
        await self._stop.wait()
        checking.cancel()
        await self._drain(server, servicer, health_servicer, http)
        return EXIT_UNHEALTHY if self._unhealthy else EXIT_OK

    async def _watch_health(self, servicer: ReplicaServicer) -> None:
        """Ask the model's is_healthy() every health_check_seconds (Truss's readiness probe)."""
        interval = self._options.health_check_seconds
        while not self._stop.is_set():
            await asyncio.sleep(interval)
            predictor = servicer.predictor
            if predictor is None or not predictor.checks_health:
                continue
            try:
                async with asyncio.timeout(interval):
                    healthy = await predictor.is_healthy()
                error = "" if healthy else "is_healthy() returned False"
            except TimeoutError:
                error = f"is_healthy() did not answer within {interval:g}s"
            except ModelError as exc:
                error = f"is_healthy() raised {type(exc.cause).__name__}: {exc.cause}"
            if error:
                self._log.error("model_unhealthy", error=error)
                self._state.write(UNHEALTHY, error=error)
                self._unhealthy = True
                self._stop.set()
                return

    async def _build_server(self) -> tuple[grpc.aio.Server, ReplicaServicer, health.aio.HealthServicer]:
        # Without this, grpc sets SO_REUSEPORT and a second process could silently
        # share a fixed --port with this one.
        options = [("grpc.so_reuseport", 0), *replica_receive_options(self._options.max_request_bytes)]
        auth = TokenInterceptor(
            REPLICA_TOKEN_HEADER,
            self._options.token,
            [SERVICE_NAME, direct.SERVICE],
            "REPLICA",
            on_refused=lambda fields: self._log.warning("call_refused", **fields),
        )
        server = grpc.aio.server(options=options, interceptors=[auth])
        reload_root = self._options.packages_root if self._options.development else None
        calls = ModelCalls(self._log, self._options.max_request_bytes)
        servicer = ReplicaServicer(self._log, self._options.max_request_bytes, reload_root, calls)
        replica_service_pb2_grpc.add_ReplicaServiceServicer_to_server(servicer, server)
        # The native data plane's gRPC route: InferenceService answered here, without the gateway.
        server.add_generic_rpc_handlers(
            (direct.DirectInference(calls, self._identity, self._options.request_timeout_seconds).handler(),)
        )
        health_servicer = health.aio.HealthServicer()
        for service in ("", SERVICE_NAME):  # "" starts out SERVING otherwise
            await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, direct.SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server, servicer, health_servicer

    @property
    def _identity(self) -> direct.Identity:
        options = self._options
        return direct.Identity(options.deployment_id, options.model_id, options.model_name)

    def _bind_http(self) -> socket.socket:
        """The HTTP predict route's socket, bound and listening now (its port goes in the state
        file beside the gRPC one); it is served once its module is imported (HttpRoute)."""
        options = self._options
        host = options.host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, options.http_port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._state.http_port = sock.getsockname()[1]
        return sock

    async def _load(self, config: PackageConfig) -> Predictor | None:
        """The ready predictor; None if loading failed or a stop signal came first."""
        self._log.info("model_loading", model_file=str(config.model_file))
        started = time.monotonic()
        loading = asyncio.create_task(self._load_predictor(config))
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not loading.done():
            # The load runs in a thread and cannot be interrupted; main() exits without it.
            loading.cancel()
            self._log.info("stopped_while_loading")
            return None
        try:
            predictor = loading.result()
        except (Exception, SystemExit) as exc:  # a model module may call sys.exit()
            self._fail("model_load_failed", exc, config)
            return None
        seconds = time.monotonic() - started
        METRICS.load_seconds.set(seconds)
        self._log.info("model_loaded", seconds=round(seconds, 3))
        return predictor

    async def _load_predictor(self, config: PackageConfig) -> Predictor:
        threads = self.threads
        assert threads is not None, "run() starts the model threads before loading"
        model = await load_model(config, threads)
        return Predictor(model, config, threads, self._options.max_request_bytes)

    async def _drain(
        self,
        server: grpc.aio.Server,
        servicer: ReplicaServicer,
        health_servicer: health.aio.HealthServicer,
        http: HttpRoute,
    ) -> None:
        drain_seconds = self._options.drain_seconds
        self._log.info("draining", drain_seconds=drain_seconds)
        await health_servicer.enter_graceful_shutdown()
        # The controller signals a drain once every gateway has stopped routing here, but a
        # call a gateway dispatched just before may still be on its way: serve stragglers for
        # a moment rather than refuse them (a refusal costs a retry elsewhere).
        await asyncio.sleep(min(self._options.late_arrival_seconds, drain_seconds))
        # New predict calls are refused with UNAVAILABLE (retriable elsewhere) rather
        # than left to the server's shutdown, which may answer a call racing it with
        # CANCELLED. Health checks keep answering NOT_SERVING meanwhile.
        servicer.refuse_new_calls()
        drained = await servicer.wait_idle(drain_seconds)
        # Cancels whatever is left: health Watch streams, and predicts past the deadline.
        await http.stop()
        await _stop_server(server)
        self._log.info("stopped", drained=drained)

    def _fail(self, event: str, exc: BaseException, config: PackageConfig | None = None) -> int:
        """Report a failure: the model's own frames in the state file (see model_traceback),
        the full traceback in the log."""
        error = describe_failure(exc)
        self._state.write(FAILED, error=error, traceback=model_traceback(exc, config))
        self._log.error(event, error=error, traceback="".join(traceback.format_exception(exc)))
        return EXIT_MODEL_FAILED

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if not self._stop.is_set():
            self._log.info("signal_received", signal=signal.Signals(signum).name)
            self._stop.set()


class HttpRoute:
    """The HTTP predict route (replica/direct_http.py), served on `sock` in this event loop.

    Its module (aiohttp) is imported in a thread while the model loads: a replica forked
    from the fork server has it already, and a new interpreter does not wait for it before
    it loads the model and serves gRPC. Connections that arrive meanwhile wait in the
    socket's backlog."""

    def __init__(self, sock: socket.socket, calls: ModelCalls, options: Options, log: Logger) -> None:
        self._sock = sock
        self._log = log
        self._task = asyncio.get_running_loop().create_task(self._serve(calls, options))

    async def _serve(self, calls: ModelCalls, options: Options) -> Any:
        try:
            if HTTP_MODULE not in sys.modules:
                await asyncio.to_thread(importlib.import_module, HTTP_MODULE)
            from replica import direct_http

            return await direct_http.serve(
                self._sock, calls, options.token, options.request_timeout_seconds, options.model_id
            )
        except Exception as exc:  # gRPC goes on serving; the proxy's HTTP calls to this replica fail
            self._log.error("http_route_failed", error=describe_failure(exc), traceback=traceback.format_exc())
            self._sock.close()
            return None

    async def stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
        runner = None
        with contextlib.suppress(asyncio.CancelledError):
            runner = await self._task
        if runner is not None:
            await runner.cleanup()
        self._sock.close()


async def _stop_server(server: grpc.aio.Server) -> None:
    """Stop at once, cancelling RPCs still running, and let their tasks end.

    Without the wait, asyncio.run would cancel those tasks again on exit, and grpc
    prints a bare traceback to stderr for each RPC task cancelled that way.
    """
    await server.stop(None)
    pending = asyncio.all_tasks() - {asyncio.current_task()}
    if pending:
        await asyncio.wait(pending, timeout=1.0)
