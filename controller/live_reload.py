"""Live reload of development deployments: commit a patch, then bring the replicas to it.

The patch is committed first (Lifecycle.patch_development) as the deployment's latest
package, the base of the next patch. Then every replica running the deployment's
revision is asked to Reload it, and the outcome is recorded (Observations.record_reload):
once it loaded (or no replica ran to load it) it becomes the deployment's
package_digest, which a replica started later, after a scale to zero, a crash or a
controller restart, starts from; if it failed, package_digest stays the package that
last loaded and the deployment says why. Reload is idempotent (a replica already
serving the package answers at once), so the controller keeps no record of which
package each replica runs: syncing to the deployment's latest package is always
right, after a retry or a restart too.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from controller.domain import Deployment, ReplicaPhase
from controller.errors import Unavailable
from controller.lifecycle import Lifecycle
from controller.packages import FilePatch
from controller.replica_runtime import ReplicaHandle
from slipway.internal_auth import REPLICA_TOKEN_HEADER
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import replica_service_pb2_grpc as rs_grpc

SETTLE_POLL_SECONDS = 0.01


class PatchResult(enum.StrEnum):
    APPLIED_IN_PLACE = "applied_in_place"
    RESTARTED = "restarted"
    FAILED = "failed"  # the replicas keep serving the previous code
    STORED = "stored"  # no replica runs; the next one starts with the patched package


@dataclass(frozen=True)
class PatchOutcome:
    deployment: Deployment
    result: PatchResult
    apply_seconds: float
    error: str = ""
    traceback: str = ""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReloadFailure:
    error: str
    traceback: str = ""


class LiveReloader:
    def __init__(
        self,
        lifecycle: Lifecycle,
        replicas_of: Callable[[str], list[ReplicaHandle]],
        reload_timeout_seconds: float = 600.0,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.lifecycle = lifecycle
        self.replicas_of = replicas_of
        # Only the leader runs the replicas to reload (and records the outcome, fenced).
        self.leading = leading
        # A replica that is still starting may take as long as a reload to be ready.
        self.reload_timeout_seconds = reload_timeout_seconds
        # Patches of one deployment are committed and reloaded in order.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def patch(
        self, deployment_id: str, base_digest: str, patches: Sequence[FilePatch], request_id: str
    ) -> PatchOutcome:
        started = time.monotonic()
        if not self.leading():  # refused before anything is committed: safe to send elsewhere
            raise Unavailable("NOT_LEADER", "this controller is not the leader: patch on the leader")
        async with self._locks[deployment_id]:
            committed = await self.lifecycle.patch_development(deployment_id, base_digest, patches, request_id)
            warnings = committed.warnings
            if committed.flag:
                assert committed.deployment is not None, "patch_development returns the patched deployment"
                return PatchOutcome(
                    committed.deployment, PatchResult.RESTARTED, time.monotonic() - started, warnings=warnings
                )
            deployment = await self.lifecycle.get_deployment(deployment_id)
            digest = deployment.patch_base_digest
            replicas = await self._ready_replicas(deployment)
            failures = await asyncio.gather(*(self._reload(handle, digest) for handle in replicas))
            failure = next((f for f in failures if f is not None), None)
            deployment = await self.lifecycle.observed.record_reload(
                deployment, digest, len(replicas), failure.error if failure else ""
            )
        elapsed = time.monotonic() - started
        if failure is not None:
            return PatchOutcome(deployment, PatchResult.FAILED, elapsed, failure.error, failure.traceback, warnings)
        result = PatchResult.APPLIED_IN_PLACE if replicas else PatchResult.STORED
        return PatchOutcome(deployment, result, elapsed, warnings=warnings)

    async def _ready_replicas(self, deployment: Deployment) -> list[ReplicaHandle]:
        """Replicas of the current revision, once none of them is still starting.

        A replica that was starting when the patch committed may have been given the
        previous package; it is reloaded as soon as it is ready.
        """
        deadline = time.monotonic() + self.reload_timeout_seconds
        while True:
            live = [
                h
                for h in self.replicas_of(deployment.id)
                if h.revision == deployment.revision and not h.exited and h.phase is not ReplicaPhase.DRAINING
            ]
            starting = [h for h in live if h.phase in (ReplicaPhase.STARTING, ReplicaPhase.LOADING)]
            if not starting or time.monotonic() > deadline:
                return [h for h in live if h.phase is ReplicaPhase.READY]
            await asyncio.sleep(SETTLE_POLL_SECONDS)

    async def _reload(self, handle: ReplicaHandle, digest: str) -> ReloadFailure | None:
        # A replica running as its model's user loads its own copy of the package, a replica on
        # another machine a copy on its node: made here.
        await handle.make_package_available(self.lifecycle.packages.directory(digest))
        request = rs.ReloadRequest(package_digest=digest)
        try:
            async with grpc.aio.insecure_channel(handle.address) as channel:
                stub = rs_grpc.ReplicaServiceStub(channel)
                response = await stub.Reload(
                    request,
                    timeout=self.reload_timeout_seconds,
                    metadata=((REPLICA_TOKEN_HEADER, handle.token),),
                )
        except grpc.aio.AioRpcError as err:
            if handle.phase is ReplicaPhase.DRAINING:
                return None  # stopped on purpose; its successor starts from the new package
            return ReloadFailure(f"replica {handle.id} did not reload: {err.code().name}: {err.details()}")
        if response.ok:
            return None
        return ReloadFailure(response.error, response.traceback)
