"""The route table that gateways follow, and the load they report back.

The table is rebuilt from the store (models, deployments, deleted IDs) and the
runtime's ready replicas whenever either changes; changes that arrive together are
coalesced into one version. Each subscriber gets the newest table: a slow gateway
skips intermediate versions instead of queueing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from controller.domain import ReplicaPhase
from controller.runtime import ReplicaHandle
from controller.store import Store
from slipway.v1 import resources_pb2 as r
from slipway.v1 import route_service_pb2 as rt

log = logging.getLogger("slipway.routes")

COALESCE_SECONDS = 0.002


class RouteBroadcaster:
    def __init__(self, store: Store, replicas: Callable[[], list[ReplicaHandle]]) -> None:
        self._store = store
        self._replicas = replicas
        self._dirty = asyncio.Event()
        self._published = asyncio.Condition()
        self.table = rt.RouteTable(version=0)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.mark_dirty()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def mark_dirty(self, *_: object) -> None:
        self._dirty.set()

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            self._dirty.clear()
            try:
                table = await self._build(self.table.version + 1)
            except Exception:
                log.exception("could not build the route table; retrying")
                self._dirty.set()
                await asyncio.sleep(0.5)
                continue
            async with self._published:
                self.table = table
                self._published.notify_all()

    async def _build(self, version: int) -> rt.RouteTable:
        snapshot = await self._store.route_snapshot()
        endpoints: dict[str, list[rt.Endpoint]] = {}
        for handle in self._replicas():
            if handle.phase is ReplicaPhase.READY and not handle.exited:
                endpoints.setdefault(handle.deployment_id, []).append(
                    rt.Endpoint(replica_id=handle.id, address=handle.address)
                )
        return rt.RouteTable(
            version=version,
            models=[
                rt.ModelRoute(
                    model_id=m.id,
                    model_name=m.name,
                    production_deployment_id=m.production_deployment_id or "",
                    development_deployment_id=m.development_deployment_id or "",
                )
                for m in snapshot.models
            ],
            deployments=[
                rt.DeploymentRoute(
                    deployment_id=d.id,
                    model_id=d.model_id,
                    name=d.name,
                    active=d.active,
                    state=r.DeploymentState.Value(f"DEPLOYMENT_STATE_{d.state.value}"),
                    endpoints=endpoints.get(d.id, []),
                )
                for d in snapshot.deployments
            ],
            deleted_model_ids=snapshot.deleted_model_ids,
            deleted_deployment_ids=snapshot.deleted_deployment_ids,
        )

    async def wait_published(self, predicate: Callable[[rt.RouteTable], bool], timeout: float) -> bool:
        """Wait until a published table satisfies `predicate` (e.g. a replica left it)."""
        async with self._published:
            try:
                await asyncio.wait_for(self._published.wait_for(lambda: predicate(self.table)), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def subscribe(self) -> AsyncIterator[rt.RouteTable]:
        sent = -1
        while True:
            async with self._published:
                await self._published.wait_for(lambda: self.table.version > sent and self.table.version > 0)
                table = self.table
            sent = table.version
            yield table


@dataclass
class GatewayLoad:
    in_flight: int
    queued: int
    requests_total: int
    reported_at: float


class LoadTracker:
    """Latest load report per gateway and deployment. Reports older than `ttl` are ignored."""

    def __init__(self, ttl_seconds: float = 10.0) -> None:
        self._ttl = ttl_seconds
        self._reports: dict[tuple[str, str], GatewayLoad] = {}

    def record(self, request: rt.ReportLoadRequest) -> None:
        now = time.monotonic()
        for load in request.loads:
            self._reports[(request.gateway_id, load.deployment_id)] = GatewayLoad(
                load.in_flight, load.queued, load.requests_total, now
            )

    def in_flight(self, deployment_id: str) -> int:
        """Requests in flight or queued for a deployment, summed over live gateways."""
        cutoff = time.monotonic() - self._ttl
        return sum(
            load.in_flight + load.queued
            for (_, d), load in self._reports.items()
            if d == deployment_id and load.reported_at >= cutoff
        )
