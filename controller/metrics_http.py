"""`GET /metrics` on the controller's HTTP port: the controller's registry and, asked for
when scraped, its ready replicas' metrics with the deployment's and the replica's labels.

Why asked at scrape time over ReplicaService.GetMetrics (the authenticated channel the
platform already has to each replica) rather than pushed with reports: the figures are
as fresh as the scrape, nothing is sent when nobody scrapes, and replicas keep no
connection to the controller. A replica runs untrusted model code, so what it answers is
filtered: only the replica metric names and labels Slipway defines, at most
MAX_REPLICA_SAMPLES samples and MAX_REPLICA_BYTES bytes each, within REPLICA_TIMEOUT_SECONDS
(a replica that does not answer in time is left out of that scrape)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

import grpc
from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from controller.connect_protocol import CONNECT_CODES, error_info, error_json
from controller.domain import ReplicaPhase
from controller.metrics import ControllerMetrics
from slipway.auth import Authenticator, grpc_code
from slipway.internal_auth import REPLICA_TOKEN_HEADER
from slipway.keys import AuthError, Scope
from slipway.metrics import DEPLOYMENT_LABELS, METRICS_PATH, exposition
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import replica_service_pb2_grpc as rs_grpc

REPLICA_TIMEOUT_SECONDS = 1.0
MAX_REPLICA_BYTES = 256 * 1024
MAX_REPLICA_SAMPLES = 200
# The replica metrics (replica/metrics.py) and the labels each may carry.
REPLICA_FAMILIES = {
    "slipway_replica_predict_duration_seconds": frozenset({"phase", "le"}),
    "slipway_replica_in_flight": frozenset(),
    "slipway_replica_model_load_seconds": frozenset(),
}
REPLICA_LABELS = (*DEPLOYMENT_LABELS, "replica_id")


class ReplicaCollector(Collector):
    """The families last gathered from the replicas (set just before each exposition)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)

    def describe(self) -> Iterator[Metric]:
        return iter(())


def merge(answers: Iterable[tuple[tuple[str, ...], bytes]]) -> list[Metric]:
    """One family per name across replicas, each sample with its replica's labels added."""
    families: dict[str, Metric] = {}
    for labels, text in answers:
        extra = dict(zip(REPLICA_LABELS, labels, strict=True))
        count = 0
        try:
            parsed = list(text_string_to_metric_families(text.decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            continue  # not an exposition: the replica's answer is left out
        for family in parsed:
            allowed = REPLICA_FAMILIES.get(family.name)
            if allowed is None:
                continue
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                if not set(sample.labels) <= allowed or sample.name.endswith("_created"):
                    continue
                count += 1
                if count > MAX_REPLICA_SAMPLES:
                    break
                merged.add_sample(sample.name, {**sample.labels, **extra}, sample.value)
    return list(families.values())


class MetricsEndpoint:
    def __init__(
        self,
        metrics: ControllerMetrics,
        authenticator: Authenticator,
        replicas: Callable[[], Iterable],
    ) -> None:
        self._metrics = metrics
        self._authenticator = authenticator
        self._replicas = replicas
        self._collector = ReplicaCollector()
        metrics.registry.register(self._collector)
        # One scrape at a time asks the replicas (the collector holds its answers until
        # the exposition); a scrape reuses the answers of a round that started after it
        # arrived, so a burst of scrapes costs the replicas two rounds, not one each.
        self._gathering = asyncio.Lock()
        self._gather_started = float("-inf")

    def add_route(self, app: web.Application) -> None:
        app.router.add_get(METRICS_PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            await self._authenticator.check(
                request.headers.get("Authorization"), request.remote or "", Scope.METRICS, f"GET {METRICS_PATH}"
            )
        except AuthError as error:
            code = grpc_code(error)
            status = CONNECT_CODES[code][1]
            headers = {"WWW-Authenticate": 'Api-Key realm="slipway"'} if status == 401 else {}
            return web.json_response(
                error_json(code, error.message, [error_info(error.reason)]), status=status, headers=headers
            )
        arrived = time.monotonic()
        async with self._gathering:
            if self._gather_started < arrived:
                self._gather_started = time.monotonic()
                self._collector.families = merge(await self._gather())
            return exposition(self._metrics.registry)

    async def _gather(self) -> list[tuple[tuple[str, ...], bytes]]:
        asks: list[Awaitable[tuple[tuple[str, ...], bytes] | None]] = []
        for handle in self._replicas():
            labels = self._metrics.labels.get(handle.deployment_id)
            if handle.phase is ReplicaPhase.READY and not handle.exited and handle.address and labels:
                asks.append(_ask(handle, (*labels, handle.id)))
        return [answer for answer in await asyncio.gather(*asks) if answer is not None]


async def _ask(handle, labels: tuple[str, ...]) -> tuple[tuple[str, ...], bytes] | None:
    options = [("grpc.max_receive_message_length", MAX_REPLICA_BYTES)]
    async with grpc.aio.insecure_channel(handle.address, options=options) as channel:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
            response = await rs_grpc.ReplicaServiceStub(channel).GetMetrics(
                rs.GetMetricsRequest(),
                timeout=REPLICA_TIMEOUT_SECONDS,
                metadata=((REPLICA_TOKEN_HEADER, handle.token),),
            )
            return labels, response.text
    return None
