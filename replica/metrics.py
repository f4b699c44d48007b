"""A replica's Prometheus metrics, read by the controller through ReplicaService.GetMetrics
(the controller adds the deployment's and the replica's labels and serves them on its own
/metrics: one scrape target per controller). A replica is one process serving one model,
so its registry is the process's own (still never prometheus_client's global one)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from slipway.metrics import REQUEST_BUCKETS

PREPROCESS, PREDICT, POSTPROCESS = "preprocess", "predict", "postprocess"
PHASES = (PREPROCESS, PREDICT, POSTPROCESS)


class ReplicaMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.predict = Histogram(
            "slipway_replica_predict_duration_seconds",
            "Time in the model's own code per request, by phase (preprocess, predict, postprocess); "
            "a streaming predict until it returned its generator.",
            ("phase",),
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self._phases = {phase: self.predict.labels(phase) for phase in PHASES}
        self.in_flight = Gauge("slipway_replica_in_flight", "Calls the replica is serving now.", registry=self.registry)
        self.load_seconds = Gauge(
            "slipway_replica_model_load_seconds",
            "How long the model being served took to load (import, construct, load(); a live reload's too).",
            registry=self.registry,
        )

    @contextlib.contextmanager
    def phase(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._phases[phase].observe(time.perf_counter() - started)

    def watch_in_flight(self, count: Callable[[], int]) -> None:
        self.in_flight.set_function(count)

    def text(self) -> bytes:
        return generate_latest(self.registry)


METRICS = ReplicaMetrics()
