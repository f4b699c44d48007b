"""The route table that gateways follow, and the load they report back.

The controller keeps the table in memory and updates it incrementally: a store
commit names the deployments and models it touched, a replica event names its
deployment, and only those rows are re-read. Changes that arrive together are
coalesced into one version. A new subscriber gets the whole table (reset), then
one delta per version; a subscriber that falls too far behind gets a new reset. When
the store may have missed other controllers' changes (a reset Change: its LISTEN
connection was lost), the whole table is read again and every subscriber gets it.
Subscribers acknowledge the versions they have applied, so a replica can be
drained once no gateway routes to it any more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from controller import rollout_environments as rollouts
from controller.domain import Deployment, Model, ReplicaPhase
from controller.environments import Environment
from controller.replica_runtime import ReplicaHandle
from controller.rollout_rules import Rollout
from controller.store import ApiKeyRow, Change, Store
from slipway.keys import SCOPE_TO_PROTO, Scope
from slipway.status import MAX_STATUS_MESSAGE_BYTES
from slipway.text import shorten
from slipway.v1 import route_service_pb2 as rt

log = logging.getLogger("slipway.routes")

COALESCE_SECONDS = 0.002
DELTA_HISTORY = 256


def _model_route(
    model: Model, environments: list[Environment], rolling: dict[tuple[str, str], Rollout]
) -> rt.ModelRoute:
    """The model's route: production (when it has a deployment) and every named environment
    (with or without one), each with the deployments that take its traffic — during a
    rolling promotion the candidate and the previous one with the rollout's weights
    (controller/rollouts.py)."""
    return rt.ModelRoute(
        model_id=model.id,
        model_name=model.name,
        production_deployment_id=model.production_deployment_id or "",
        development_deployment_id=model.development_deployment_id or "",
        environments=[
            rt.EnvironmentRoute(
                name=e.name, deployments=rollouts.weighted_deployments(e, rolling.get((e.model_id, e.name)))
            )
            for e in environments
            if e.deployment_id or not e.is_production
        ],
    )


def _by_model(environments: list[Environment]) -> dict[str, list[Environment]]:
    grouped: dict[str, list[Environment]] = collections.defaultdict(list)
    for environment in environments:
        grouped[environment.model_id].append(environment)
    return grouped


def _api_key_route(row: ApiKeyRow) -> rt.ApiKeyRoute:
    return rt.ApiKeyRoute(
        key_id=row.id,
        key_sha256=row.key_sha256,
        scope=SCOPE_TO_PROTO[Scope(row.scope)],
        model_ids=row.model_ids,
        expire_time=row.expire_time or 0.0,
        revoked=row.revoke_time is not None,
    )


class RouteBroadcaster:
    def __init__(self, store: Store, replicas_of: Callable[[str], list[ReplicaHandle]]) -> None:
        self._store = store
        self._replicas_of = replicas_of
        self.version = 0
        self._generation = 0  # raised by end_streams()
        self.models: dict[str, rt.ModelRoute] = {}
        self.deployments: dict[str, rt.DeploymentRoute] = {}
        self.deleted_models: set[str] = set()
        self.deleted_deployments: set[str] = set()
        self.api_keys: dict[str, rt.ApiKeyRoute] = {}
        self._history: collections.deque[rt.WatchRoutesResponse] = collections.deque(maxlen=DELTA_HISTORY)
        self._dirty_models: set[str] = set()
        self._dirty_deployments: set[str] = set()
        self._dirty_api_keys: set[str] = set()
        self._reread_all = False
        self._dirty = asyncio.Event()
        self._published = asyncio.Condition()
        # Per following gateway (gateway_id): its current stream, and the newest version it
        # has acknowledged (None until its first acknowledgement: a stream that never
        # acknowledges, like `grpcurl` or an older gateway, holds up no drain).
        self._following: dict[str, tuple[object, int | None]] = {}
        self._acknowledged = asyncio.Event()  # replaced (and set) on every change of _following
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self._read_all()
        self.version = 1
        self._task = asyncio.create_task(self._run())

    async def _read_all(self) -> None:
        snapshot = await self._store.route_snapshot()
        api_keys = await self._store.all_api_keys()
        environments = _by_model(snapshot.environments)
        rolling = rollouts.active_by_environment(await self._store.active_rollouts())
        self.models = {m.id: _model_route(m, environments[m.id], rolling) for m in snapshot.models}
        self.deployments = {d.id: self._deployment_route(d) for d in snapshot.deployments}
        self.deleted_models = set(snapshot.deleted_model_ids)
        self.deleted_deployments = set(snapshot.deleted_deployment_ids)
        self.api_keys = {row.id: _api_key_route(row) for row in api_keys}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def on_store_change(self, change: Change) -> None:
        self._reread_all |= change.reset
        self._dirty_deployments |= change.deployments
        self._dirty_models |= change.models
        self._dirty_api_keys |= change.api_keys
        self._dirty.set()

    def on_replica_change(self, handle: ReplicaHandle) -> None:
        self._dirty_deployments.add(handle.deployment_id)
        self._dirty.set()

    def _deployment_route(self, deployment: Deployment) -> rt.DeploymentRoute:
        return rt.DeploymentRoute(
            deployment_id=deployment.id,
            model_id=deployment.model_id,
            name=deployment.name,
            active=deployment.active,
            state=f"DEPLOYMENT_STATE_{deployment.state.value}",
            status_message=shorten(deployment.status_message, MAX_STATUS_MESSAGE_BYTES),
            endpoints=[
                rt.Endpoint(replica_id=h.id, address=h.address, token=h.token, http_address=h.http_address)
                for h in self._replicas_of(deployment.id)
                if h.phase is ReplicaPhase.READY and not h.exited
            ],
        )

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            self._dirty.clear()
            deployment_ids, self._dirty_deployments = self._dirty_deployments, set()
            model_ids, self._dirty_models = self._dirty_models, set()
            api_key_ids, self._dirty_api_keys = self._dirty_api_keys, set()
            reread_all, self._reread_all = self._reread_all, False
            try:
                if reread_all:
                    await self._read_all()
                    delta = None
                else:
                    delta = await self._apply(deployment_ids, model_ids, api_key_ids)
            except Exception:
                log.exception("could not update the route table; retrying")
                self._dirty_deployments |= deployment_ids
                self._dirty_models |= model_ids
                self._dirty_api_keys |= api_key_ids
                self._reread_all |= reread_all
                self._dirty.set()
                await asyncio.sleep(0.5)
                continue
            async with self._published:
                self.version += 1
                if delta is None:  # read afresh: every subscriber gets the whole table (no delta reaches it)
                    self._history.clear()
                else:
                    delta.version = self.version
                    self._history.append(delta)
                self._published.notify_all()

    async def _apply(
        self, deployment_ids: set[str], model_ids: set[str], api_key_ids: set[str]
    ) -> rt.WatchRoutesResponse:
        delta = rt.WatchRoutesResponse()
        models = await self._store.models_by_id(model_ids)
        environments = _by_model(await self._store.environments_of(m.id for m in models if m.delete_time is None))
        rolling = rollouts.active_by_environment(await self._store.active_rollouts(model_ids)) if model_ids else {}
        for model in models:
            if model.delete_time is not None:
                self.models.pop(model.id, None)
                self.deleted_models.add(model.id)
                delta.deleted_model_ids.append(model.id)
            else:
                route = self.models[model.id] = _model_route(model, environments[model.id], rolling)
                delta.models.append(route)
        for deployment in await self._store.deployments_by_id(deployment_ids):
            if deployment.deleted:
                self.deployments.pop(deployment.id, None)
                self.deleted_deployments.add(deployment.id)
                delta.deleted_deployment_ids.append(deployment.id)
            else:
                deployment_route = self.deployments[deployment.id] = self._deployment_route(deployment)
                delta.deployments.append(deployment_route)
        for row in await self._store.api_keys_by_id(api_key_ids):
            key_route = self.api_keys[row.id] = _api_key_route(row)
            delta.api_keys.append(key_route)
        return delta

    def _published_after(self, version: int) -> Callable[[], bool]:
        return lambda: self.version > version

    def snapshot(self) -> rt.WatchRoutesResponse:
        return rt.WatchRoutesResponse(
            version=self.version,
            reset=True,
            models=list(self.models.values()),
            deployments=list(self.deployments.values()),
            deleted_model_ids=sorted(self.deleted_models),
            deleted_deployment_ids=sorted(self.deleted_deployments),
            api_keys=list(self.api_keys.values()),
        )

    def routed(self, replica_id: str, deployment_id: str) -> bool:
        route = self.deployments.get(deployment_id)
        return route is not None and any(e.replica_id == replica_id for e in route.endpoints)

    async def wait_unrouted(self, replica_id: str, deployment_id: str, timeout: float) -> bool:
        """Wait until a published version no longer routes to the replica and every
        following gateway has applied it; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                async with self._published:
                    await self._published.wait_for(lambda: not self.routed(replica_id, deployment_id))
                    version = self.version
                while any(applied is not None and applied < version for _, applied in self._following.values()):
                    await self._acknowledged.wait()
        except TimeoutError:
            return False
        return True

    def acknowledge(self, gateway_id: str, version: int) -> None:
        if gateway_id in self._following:
            stream, applied = self._following[gateway_id]
            self._following[gateway_id] = stream, max(applied or 0, version)
            self._acknowledgements_changed()

    def _acknowledgements_changed(self) -> None:
        changed, self._acknowledged = self._acknowledged, asyncio.Event()
        changed.set()

    def _published_or_ended(self, version: int, generation: int) -> Callable[[], bool]:
        published = self._published_after(version)
        return lambda: self._generation != generation or published()

    async def end_streams(self) -> None:
        """Ends every route stream (this controller stopped leading)."""
        self._generation += 1
        async with self._published:
            self._published.notify_all()

    def following(self) -> dict[str, int | None]:
        """The newest version each following gateway has acknowledged (None: it does not acknowledge)."""
        return {gateway_id: applied for gateway_id, (_, applied) in self._following.items()}

    async def subscribe(self, gateway_id: str, acknowledges: bool = False) -> AsyncIterator[rt.WatchRoutesResponse]:
        """The table, then its changes; the gateway counts as following while this runs
        (one stream per gateway_id: a reconnecting gateway replaces its old stream).

        A gateway that says it `acknowledges` counts as holding version 0 until its first
        acknowledgement: it may be about to apply a table older than a replica's removal
        (it joined, or reconnected, while that replica was being taken out), so the drain
        waits for it too. Others hold up nothing until they acknowledge."""
        stream = object()
        generation = self._generation
        if gateway_id:
            self._following[gateway_id] = stream, 0 if acknowledges else None
            self._acknowledgements_changed()
        try:
            sent = 0
            while True:
                async with self._published:
                    await self._published.wait_for(self._published_or_ended(sent, generation))
                    if self._generation != generation:
                        return  # end_streams(): the gateway moves on to another controller
                    oldest = self._history[0].version if self._history else self.version + 1
                    if sent == 0 or sent + 1 < oldest:
                        messages = [self.snapshot()]
                    else:
                        messages = [d for d in self._history if d.version > sent]
                    sent = messages[-1].version
                for message in messages:
                    yield message
        finally:
            if self._following.get(gateway_id, (None,))[0] is stream:
                del self._following[gateway_id]
                self._acknowledgements_changed()


@dataclass
class GatewayLoad:
    in_flight: int
    queued: int
    requests_total: int
    average_concurrency: float
    reported_at: float


class LoadTracker:
    """Latest load report per gateway and deployment, combined over gateways.

    A gateway's report counts for `ttl` seconds: one that stopped reporting (it died, or
    lost the controller) stops adding its concurrency then, and its entries are dropped.
    The request count the autoscaler sees only grows: each report adds what its gateway
    served since its previous one, so a gateway's report expiring is not new traffic.
    """

    def __init__(
        self,
        ttl_seconds: float = 10.0,
        on_report: Callable[[], None] = lambda: None,
        on_loads: Callable[[rt.ReportLoadRequest], None] = lambda request: None,
    ) -> None:
        self._ttl = ttl_seconds
        self._on_report = on_report
        # Every report as it arrives (the metric history sums its answers over gateways).
        self._on_loads = on_loads
        self._reports: dict[tuple[str, str], GatewayLoad] = {}
        self._requests: collections.Counter[str] = collections.Counter()

    def record(self, request: rt.ReportLoadRequest) -> None:
        now = time.monotonic()
        self._expire(now)
        for load in request.loads:
            key = (request.gateway_id, load.deployment_id)
            previous = self._reports.get(key)
            self._requests[load.deployment_id] += _served_since(previous, load.requests_total)
            self._reports[key] = GatewayLoad(
                load.in_flight, load.queued, load.requests_total, load.average_concurrency, now
            )
        self._on_loads(request)
        self._on_report()

    def _expire(self, now: float) -> None:
        cutoff = now - self._ttl
        for key in [key for key, load in self._reports.items() if load.reported_at < cutoff]:
            del self._reports[key]

    def by_gateway(self, deployment_id: str) -> dict[str, GatewayLoad]:
        """The live reports for a deployment, per gateway."""
        self._expire(time.monotonic())
        return {gateway_id: load for (gateway_id, d), load in self._reports.items() if d == deployment_id}

    def gateways(self) -> set[str]:
        """The gateways whose reports count now."""
        self._expire(time.monotonic())
        return {gateway_id for gateway_id, _ in self._reports}

    def observe(self, deployment_id: str) -> tuple[float, int]:
        """(average concurrency summed over the gateways that reported within the ttl,
        requests all gateways have served so far)."""
        self._expire(time.monotonic())
        live = [load for (_, d), load in self._reports.items() if d == deployment_id]
        return sum(load.average_concurrency for load in live), self._requests[deployment_id]


def _served_since(previous: GatewayLoad | None, requests_total: int) -> int:
    """Requests a gateway served since its previous report (all of them on its first one;
    a count that went down is a gateway that restarted under the same id)."""
    if previous is None or requests_total < previous.requests_total:
        return requests_total
    return requests_total - previous.requests_total
