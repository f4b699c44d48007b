"""The gateway's per-request observation, feeding its Prometheus metrics (README "Metrics")
and the deployment load the controller's chart history gets (`ReportLoad`).

A request is observed once. Its front (HTTP `call`, gRPC `Predict`/`PredictStream`)
starts an Observation (`GatewayMetrics.start`); the forwarder notes on it the deployment
the request resolved to; the front ends it with the status the caller saw. `done`
computes the elapsed time and the status class once and hands them to both: the
Prometheus series (when metrics are on) and the load meter of the deployment (always:
the autoscaler and the charts need it). Calls without a front observation (websocket
sessions, the schema route) get one from the forwarder, ended by their outcome and
counted in the load only.

The Prometheus labels come only from the route table (model, deployment, environment)
and the status, never from the request: a request for an unknown target is counted with
empty deployment labels (and in no deployment's load). The label children of a
(deployment, environment, protocol, status) are bound once and kept; the series of a
deployment that left the route table are removed.

In-flight requests, the wake queue and retries are the forwarder's own counts, read when
scraped (nothing on the hot path)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.routing import RouteIndex
from slipway.metrics import DEPLOYMENT_LABELS, REQUEST_BUCKETS, START_BUCKETS, environment_label
from slipway.v1 import route_service_pb2 as rt

HTTP = "http"
GRPC = "grpc"
UNROUTED = ("", "", "")


def route_labels(index: RouteIndex, deployment: rt.DeploymentRoute | None) -> tuple[str, str, str]:
    if deployment is None:
        return UNROUTED
    model = index.models.get(deployment.model_id)
    if model is None:
        return deployment.model_id, deployment.deployment_id, ""
    # The environment whose traffic the deployment takes (production or a named one), else what it is.
    environment = next(
        (e.name for e in model.environments if any(d.deployment_id == deployment.deployment_id for d in e.deployments)),
        "",
    ) or environment_label(deployment.deployment_id, model.production_deployment_id, model.development_deployment_id)
    return deployment.model_id, deployment.deployment_id, environment


def status_class(http_status: int) -> int:
    """The load's class of an answer: 2, 4 or 5 (anything else counts as a failure)."""
    cls = http_status // 100
    return cls if cls in (2, 4) else 5


# What a caller that went away is counted as (nginx's "client closed request").
CLIENT_LEFT = 499
# (deployment ID, status class, seconds) of one answer.
AnswerSink = Callable[[str, int, float], None]


class Observation:
    """One request on its way through the gateway."""

    __slots__ = ("_metrics", "protocol", "exported", "started", "deployment", "first_byte", "delivered", "broke")

    def __init__(self, metrics: GatewayMetrics, protocol: str, exported: bool = True) -> None:
        self._metrics = metrics
        self.protocol = protocol
        # Counted in Prometheus too (metrics on, and a call its front observes).
        self.exported = exported
        self.started = time.perf_counter()
        self.deployment: rt.DeploymentRoute | None = None
        self.first_byte = 0.0
        # The forwarder handed the front a chunk of the answer.
        self.delivered = False
        # The HTTP status of a failure after the caller's status had gone out (a stream
        # that broke): the load counts the failure, Prometheus the status the caller got.
        self.broke = 0

    def routed(self, deployment: rt.DeploymentRoute) -> None:
        self.deployment = deployment

    def streamed(self) -> None:
        """The first chunk of a streamed answer went out."""
        if not self.first_byte:
            self.first_byte = time.perf_counter()

    def failed_mid_stream(self, http_status: int) -> None:
        self.broke = http_status

    def done(self, code: str, http_status: int = 0) -> None:
        """`code`: the HTTP status (HTTP) or the gRPC code's name (gRPC) the caller got;
        `http_status`: its HTTP status (a gRPC call's by the gateway's mapping; HTTP: from `code`)."""
        self._metrics.record(self, code, http_status or int(code), time.perf_counter())


class GatewayMetrics:
    def __init__(self, index: Callable[[], RouteIndex], enabled: bool = True) -> None:
        self.enabled = enabled
        self._index = index
        self.registry = CollectorRegistry()
        labels = (*DEPLOYMENT_LABELS, "protocol")
        self.requests = Counter(
            "slipway_inference_requests_total",
            "Inference requests answered, by the status the caller got (status_code over HTTP, grpc_code over gRPC).",
            (*labels, "status_code", "grpc_code"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "slipway_inference_duration_seconds",
            "Inference requests end to end in the gateway: from the request's arrival to its answer's end.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.first_byte = Histogram(
            "slipway_inference_time_to_first_byte_seconds",
            "Streamed answers: from the request's arrival to the first chunk sent to the caller.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.wake_wait = Histogram(
            "slipway_wake_wait_seconds",
            "Requests that found no ready replica: how long they waited for one (served or not).",
            DEPLOYMENT_LABELS,
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.refusals = Counter(
            "slipway_gateway_refusals_total",
            "Requests the gateway refused itself (never forwarded), by ErrorInfo reason.",
            ("reason",),
            registry=self.registry,
        )
        # (deployment ID, environment, protocol, code) -> bound children; deployment ID -> label tuples.
        self._bound: dict[tuple[str, str, str, str], tuple] = {}
        self._series: dict[str, set[tuple[Histogram | Counter, tuple[str, ...]]]] = {}
        self._refusals: dict[str, Counter] = {}
        self._loads: Callable[[], Iterable[tuple[str, int, int, int]]] = lambda: ()
        self._answers: AnswerSink = lambda deployment_id, cls, seconds: None
        # Called before a scrape answers (the native data plane reads HAProxy's log up to now).
        self.before_scrape: list[Callable[[], None]] = []
        self.registry.register(_LoadCollector(self))

    def watch_loads(self, loads: Callable[[], Iterable[tuple[str, int, int, int]]]) -> None:
        """(deployment ID, in flight, queued, retries) of every deployment, read when scraped."""
        self._loads = loads

    def count_answers(self, sink: AnswerSink) -> None:
        """(deployment ID, status class, seconds) of every answer goes to `sink` (the load meters)."""
        self._answers = sink

    def start(self, protocol: str, exported: bool = True) -> Observation:
        return Observation(self, protocol, exported and self.enabled)

    def record(self, observation: Observation, code: str, http_status: int, now: float) -> None:
        elapsed = now - observation.started
        deployment = observation.deployment
        if deployment is not None:
            cls = status_class(observation.broke or http_status)
            self._answers(deployment.deployment_id, cls, elapsed)
        if not observation.exported:
            return
        labels = route_labels(self._index(), deployment)
        key = (labels[1], labels[2], observation.protocol, code)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = self._bind(labels, observation.protocol, code)
        requests, duration, first_byte = bound
        requests.inc()
        duration.observe(elapsed)
        if observation.first_byte:
            first_byte.observe(observation.first_byte - observation.started)

    def _bind(self, labels: tuple[str, str, str], protocol: str, code: str) -> tuple:
        codes = (code, "") if protocol == HTTP else ("", code)
        request_labels = (*labels, protocol, *codes)
        timed = (*labels, protocol)
        series = self._series.setdefault(labels[1], set())
        series.update({(self.requests, request_labels), (self.duration, timed), (self.first_byte, timed)})
        return (
            self.requests.labels(*request_labels),
            self.duration.labels(*timed),
            self.first_byte.labels(*timed),
        )

    def waited(self, deployment: rt.DeploymentRoute, seconds: float) -> None:
        """A request waited `seconds` for the deployment to have a ready replica."""
        if not self.enabled:
            return
        labels = route_labels(self._index(), deployment)
        self._series.setdefault(labels[1], set()).add((self.wake_wait, labels))
        self.wake_wait.labels(*labels).observe(seconds)

    def refused(self, reason: str) -> None:
        if not self.enabled:
            return
        child = self._refusals.get(reason)
        if child is None:
            child = self._refusals[reason] = self.refusals.labels(reason)
        child.inc()

    def prune(self) -> None:
        """Remove the series of deployments that left the route table (deleted)."""
        live = self._index().deployments
        for deployment_id in [d for d in self._series if d and d not in live]:
            for metric, labels in self._series.pop(deployment_id):
                metric.remove(*labels)
            for key in [k for k in self._bound if k[0] == deployment_id]:
                del self._bound[key]


class _LoadCollector(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "slipway_inference_in_flight", "Requests being served by a replica now.", labels=DEPLOYMENT_LABELS
        )
        queued = GaugeMetricFamily(
            "slipway_wake_queue_depth",
            "Requests waiting for the deployment to have a ready replica (waking or starting).",
            labels=DEPLOYMENT_LABELS,
        )
        retries = CounterMetricFamily(
            "slipway_inference_retries",
            "Requests sent again to another replica (the first was unreachable or refused it while draining).",
            labels=DEPLOYMENT_LABELS,
        )
        index = self._metrics._index()
        for deployment_id, flying, waiting, retried in self._metrics._loads():
            deployment = index.deployments.get(deployment_id)
            if deployment is None:
                continue
            labels = route_labels(index, deployment)
            in_flight.add_metric(labels, flying)
            queued.add_metric(labels, waiting)
            retries.add_metric(labels, retried)
        yield from (in_flight, queued, retries)

    def describe(self) -> Iterator[Metric]:
        return iter(())
