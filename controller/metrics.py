"""The controller's Prometheus metrics (README "Metrics"), served with its replicas' on
the controller's HTTP port (`GET /metrics`, metrics scope).

Counters and histograms are moved where things happen (the reconciler, the store's
writes, builds, the gRPC interceptor below); the gauges (replicas by phase, desired
replicas, the autoscaler's panic) are read from the reconciler when scraped. The labels
of a deployment are recorded by the reconciler from its own records, never from a
request, and a deleted deployment's series are removed (`forget`)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.domain import Deployment, ReplicaPhase
from slipway.metrics import (
    BUILD_BUCKETS,
    DEPLOYMENT_LABELS,
    DEVELOPMENT,
    INTERNAL_BUCKETS,
    PUBLISHED,
    START_BUCKETS,
)

Labels = tuple[str, str, str]
PHASES = tuple(phase.value.lower() for phase in ReplicaPhase)


class ReplicaLike(Protocol):
    deployment_id: str
    phase: ReplicaPhase
    exited: bool


def deployment_labels(deployment: Deployment) -> Labels:
    if deployment.environment:  # production, or a named environment (bounded per model)
        environment = deployment.environment
    elif deployment.is_development:
        environment = DEVELOPMENT
    else:
        environment = PUBLISHED
    return deployment.model_id, deployment.id, environment


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.grpc_handled = Counter(
            "slipway_grpc_server_handled_total",
            "Calls the controller's gRPC server answered (the Connect surface's included), by method and code.",
            ("grpc_service", "grpc_method", "grpc_code"),
            registry=registry,
        )
        self.grpc_seconds = Histogram(
            "slipway_grpc_server_handling_seconds",
            "How long the controller took to answer a call (a stream: until it ended).",
            ("grpc_service", "grpc_method"),
            buckets=INTERNAL_BUCKETS,
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "slipway_reconcile_pass_seconds",
            "Reconcile passes (every deployment compared with its replicas once).",
            buckets=INTERNAL_BUCKETS,
            registry=registry,
        )
        self.database_write_seconds = Histogram(
            "slipway_database_write_seconds",
            "Write transactions of the lifecycle database, from BEGIN to COMMIT.",
            buckets=INTERNAL_BUCKETS,
            registry=registry,
        )
        self.build_seconds = Histogram(
            "slipway_build_duration_seconds",
            "Builds of a package's Python environment, by outcome (succeeded, failed).",
            ("outcome",),
            buckets=BUILD_BUCKETS,
            registry=registry,
        )
        self.cold_start = Histogram(
            "slipway_cold_start_seconds",
            "A scaled-to-zero deployment asked for (a request through a gateway, or a wake call) "
            "until its first replica is ready.",
            DEPLOYMENT_LABELS,
            buckets=START_BUCKETS,
            registry=registry,
        )
        self.restarts = Counter(
            "slipway_replica_restarts_total",
            "Replicas that exited or were found unhealthy while serving, and were replaced.",
            DEPLOYMENT_LABELS,
            registry=registry,
        )
        # What the reconciler last saw of each deployment it runs.
        self.labels: dict[str, Labels] = {}
        self.desired: dict[str, int] = {}
        self._series: dict[str, set[tuple[Counter | Histogram, Labels]]] = {}
        self._asked_at: dict[str, float] = {}  # deployment ID -> when a wake call asked for it
        self._cold_starts: dict[str, float] = {}  # deployment ID -> when its cold start began
        # Deployments a commit touched since the reconciler last looked (deleted ones are forgotten).
        self.touched: set[str] = set()
        self._replicas: Callable[[], Iterable[ReplicaLike]] = lambda: ()
        self._panicking: Callable[[str], bool] = lambda deployment_id: False
        registry.register(_DeploymentCollector(self))

    def watch(self, replicas: Callable[[], Iterable[ReplicaLike]], panicking: Callable[[str], bool]) -> None:
        self._replicas = replicas
        self._panicking = panicking

    # --- deployments (the reconciler) ----------------------------------------------

    def observed(self, deployment: Deployment, desired: int, cold: bool) -> None:
        """One reconcile pass saw the deployment. `cold`: scaled to zero (or waking) with
        no replica: if replicas are wanted now, its cold start begins."""
        self.labels[deployment.id] = deployment_labels(deployment)
        self.desired[deployment.id] = desired
        if not cold:
            self._asked_at.pop(deployment.id, None)  # a wake of a running deployment starts nothing
        elif desired > 0:
            self.cold_start_began(deployment.id)

    def woken(self, deployment_id: str) -> None:
        """A wake call (WakeDeployment, or a gateway's for a waiting request) asked for it."""
        self._asked_at.setdefault(deployment_id, time.time())

    def cold_start_began(self, deployment_id: str) -> None:
        """The first replica of a scaled-to-zero deployment is being started."""
        if deployment_id not in self._cold_starts:
            self._cold_starts[deployment_id] = self._asked_at.pop(deployment_id, time.time())

    def replica_ready(self, deployment_id: str, ready_time: float) -> None:
        began = self._cold_starts.pop(deployment_id, None)
        self._asked_at.pop(deployment_id, None)
        labels = self.labels.get(deployment_id)
        if began is not None and labels is not None:
            self._child(self.cold_start, labels).observe(max(ready_time - began, 0.0))

    def restarted(self, deployment_id: str) -> None:
        labels = self.labels.get(deployment_id)
        if labels is not None:
            self._child(self.restarts, labels).inc()

    def _child(self, metric, labels: Labels):
        self._series.setdefault(labels[1], set()).add((metric, labels))
        return metric.labels(*labels)

    def idle(self, deployment_id: str) -> None:
        """Not reconciled now (inactive, failed): no desired replicas; its series stay."""
        self.desired.pop(deployment_id, None)
        self._cold_starts.pop(deployment_id, None)
        self._asked_at.pop(deployment_id, None)

    def forget(self, deployment_id: str) -> None:
        """The deployment was deleted: every series of it goes."""
        self.idle(deployment_id)
        self.labels.pop(deployment_id, None)
        for metric, labels in self._series.pop(deployment_id, set()):
            metric.remove(*labels)

    # --- gRPC ------------------------------------------------------------------------

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return MetricsInterceptor(self)


class _DeploymentCollector(Collector):
    def __init__(self, metrics: ControllerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        replicas = GaugeMetricFamily(
            "slipway_deployment_replicas",
            "Replicas of the deployment by phase (starting, loading, ready, draining).",
            labels=(*DEPLOYMENT_LABELS, "phase"),
        )
        desired = GaugeMetricFamily(
            "slipway_deployment_desired_replicas",
            "Replicas the reconciler wants for the deployment (the autoscaler's target, clamped).",
            labels=DEPLOYMENT_LABELS,
        )
        panic = GaugeMetricFamily(
            "slipway_autoscaler_panic",
            "1 while the autoscaler is in panic mode for the deployment (a burst drives scale-up), else 0.",
            labels=DEPLOYMENT_LABELS,
        )
        counts: dict[str, dict[str, int]] = {}
        for handle in metrics._replicas():
            if not handle.exited:
                phases = counts.setdefault(handle.deployment_id, dict.fromkeys(PHASES, 0))
                phases[handle.phase.value.lower()] += 1
        for deployment_id, labels in metrics.labels.items():
            for phase, count in counts.get(deployment_id, dict.fromkeys(PHASES, 0)).items():
                replicas.add_metric((*labels, phase), count)
            desired.add_metric(labels, metrics.desired.get(deployment_id, 0))
            panic.add_metric(labels, 1 if metrics._panicking(deployment_id) else 0)
        yield from (replicas, desired, panic)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call to a method the server has (unknown methods, whose names
    the caller chooses, are not counted). Put first: refusals by the other interceptors count."""

    def __init__(self, metrics: ControllerMetrics) -> None:
        self._metrics = metrics
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        service, _, name = method.lstrip("/").partition("/")
        return _timed(handler, self._metrics, service, name)


def _code_of(context: grpc.aio.ServicerContext, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "UNKNOWN" if failed else "OK"


def _timed(handler: grpc.RpcMethodHandler, metrics: ControllerMetrics, service: str, name: str):
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    behaviour = getattr(handler, kind)
    seconds = metrics.grpc_seconds.labels(service, name)

    def done(context, started: float, failed: bool) -> None:
        metrics.grpc_handled.labels(service, name, _code_of(context, failed)).inc()
        seconds.observe(time.perf_counter() - started)

    if inspect.isasyncgenfunction(behaviour):

        async def stream(request, context):
            started, failed = time.perf_counter(), True
            try:
                async for item in behaviour(request, context):
                    yield item
                failed = False
            finally:
                done(context, started, failed)

        wrapped = stream
    else:

        async def unary(request, context):
            started, failed = time.perf_counter(), True
            try:
                result = behaviour(request, context)
                result = await result if inspect.isawaitable(result) else result
                failed = False
                return result
            finally:
                done(context, started, failed)

        wrapped = unary
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
