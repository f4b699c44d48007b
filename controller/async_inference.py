"""Async inference wired into a controller: the queue every controller serves, and the
dispatcher and webhook deliverer only the leader runs (started on election, stopped when
deposed or stopping). Metrics: `slipway_async_queue_depth` / `slipway_async_in_progress`
(gauges per deployment), `slipway_async_queue_seconds` (time from acceptance to a run's
start), `slipway_async_requests_total` (runs recorded, by status),
`slipway_webhook_attempts_total` (by outcome) and `slipway_webhook_failures_total`
(deliveries given up)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.async_dispatch import AsyncDispatcher
from controller.async_queue import AsyncQueue
from controller.async_rules import AsyncSettings
from controller.async_servicer import AsyncQueueServicer, WebhookSecretServicer
from controller.domain import Deployment
from controller.leader import Leadership
from controller.replica_runtime import ReplicaHandle
from controller.routes import LoadTracker
from controller.secrets import SecretBox
from controller.store import Store
from controller.store.async_requests import WEBHOOK_FAILED, AsyncRequestRow, Outcome
from controller.webhooks import WebhookDeliverer
from slipway.v1 import async_service_pb2 as asv
from slipway.v1 import async_service_pb2_grpc as asv_grpc

ASYNC_QUEUE_SERVICE = asv.DESCRIPTOR.services_by_name["AsyncQueueService"].full_name
WEBHOOK_SECRET_SERVICE = asv.DESCRIPTOR.services_by_name["WebhookSecretService"].full_name
QUEUE_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)


class AsyncMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model_id", "deployment_id")
        self.depth = Gauge("slipway_async_queue_depth", "Queued async requests", labels, registry=registry)
        self.in_progress = Gauge(
            "slipway_async_in_progress", "Async requests running on replicas", labels, registry=registry
        )
        self.queue_seconds = Histogram(
            "slipway_async_queue_seconds",
            "Time from an async request's acceptance to the start of its run",
            labels,
            buckets=QUEUE_SECONDS_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "slipway_async_requests_total", "Async runs recorded, by status", (*labels, "status"), registry=registry
        )
        self.webhook_attempts = Counter(
            "slipway_webhook_attempts_total", "Webhook delivery attempts", ("model_id", "outcome"), registry=registry
        )
        self.webhook_failures = Counter(
            "slipway_webhook_failures_total", "Webhook deliveries given up", ("model_id",), registry=registry
        )

    def started(self, row: AsyncRequestRow) -> None:
        self.queue_seconds.labels(row.model_id, row.deployment_id).observe(max(time.time() - row.create_time, 0.0))

    def finished(self, row: AsyncRequestRow, outcome: Outcome) -> None:
        self.requests.labels(row.model_id, row.deployment_id, outcome.status).inc()

    def load(self, counts: dict[str, tuple[int, int, str]]) -> None:
        self.depth.clear()
        self.in_progress.clear()
        for deployment_id, (queued, running, model_id) in counts.items():
            self.depth.labels(model_id, deployment_id).set(queued)
            self.in_progress.labels(model_id, deployment_id).set(running)

    def webhook_attempt(self, row: AsyncRequestRow, error: str, status: str) -> None:
        self.webhook_attempts.labels(row.model_id, "failed" if error else "delivered").inc()
        if status == WEBHOOK_FAILED:
            self.webhook_failures.labels(row.model_id).inc()


class AsyncInference:
    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        settings: AsyncSettings,
        box: SecretBox,
        registry: CollectorRegistry,
        replicas_of: Callable[[str], list[ReplicaHandle]],
        package_dir: Callable[[Deployment], object],
        load: LoadTracker,
        wake: Callable[[str], None],
        max_message_bytes: int,
    ) -> None:
        self.metrics = AsyncMetrics(registry)
        self.queue = AsyncQueue(store, settings, box, on_enqueue=self._enqueued)
        self.deliverer = WebhookDeliverer(
            store, leadership, settings, self.queue.webhook_secret, on_attempt=self.metrics.webhook_attempt
        )
        self.dispatcher = AsyncDispatcher(
            store,
            leadership,
            settings,
            replicas_of,
            package_dir,
            load,
            wake,
            max_message_bytes,
            on_finished=self._finished,
            on_started=self.metrics.started,
            on_load=self.metrics.load,
        )
        self._tasks: list[asyncio.Task] = []

    def _enqueued(self) -> None:
        self.dispatcher.poke()

    def _finished(self, row: AsyncRequestRow, outcome: Outcome) -> None:
        self.metrics.finished(row, outcome)
        if row.webhook_endpoint:
            self.deliverer.poke()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        asv_grpc.add_AsyncQueueServiceServicer_to_server(AsyncQueueServicer(self.queue), server)
        asv_grpc.add_WebhookSecretServiceServicer_to_server(WebhookSecretServicer(self.queue), server)

    def lead(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self.dispatcher.run()), asyncio.create_task(self.deliverer.run())]

    async def follow(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
