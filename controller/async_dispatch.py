"""The leader's async dispatcher: runs queued requests on ready replicas.

Only the leader runs it (started when elected, cancelled when deposed: controller/server.py),
and every change it makes to the queue is a fenced write (controller/leader.py), so a
deposed or paused controller records nothing. One pass:

1. Runs left IN_PROGRESS that no task of this leader carries out — a previous leader's
   (killed or deposed mid-run: another fencing token), or one of ours whose outcome could
   not be recorded — are queued again (or FAILED after `max_attempts`): the at-least-once
   half of the guarantee (controller/async_rules.py).
2. Queued requests past their queue time are EXPIRED; finished ones past retention deleted.
3. The queue's load (queued + running per deployment) is reported to the autoscaler as a
   gateway's would be, so a queue scales a deployment up, and wakes one scaled to zero.
4. Each deployment with queued requests gets as many as it has free slots
   (`predict_concurrency` per ready replica, minus the queue's runs on it): claimed
   IN_PROGRESS (committed) before each is sent to the least-busy ready replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controller import async_rules as rules
from controller import domain
from controller.domain import Deployment, ReplicaPhase
from controller.leader import Leadership, LeaseLost
from controller.replica_runtime import ReplicaHandle
from controller.routes import LoadTracker
from controller.store import Store
from controller.store.async_requests import FAILED, SUCCEEDED, AsyncRequestRow, Outcome
from replica.package import load_package_config
from slipway.internal_auth import REPLICA_TOKEN_HEADER
from slipway.limits import grpc_message_options
from slipway.process import wait_event
from slipway.request_ids import METADATA_KEY as REQUEST_ID_KEY
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import replica_service_pb2_grpc as rs_grpc
from slipway.v1 import route_service_pb2 as rt

log = logging.getLogger("slipway.async")

# The load the queue reports is that of a gateway with this ID (controller/routes.py LoadTracker).
LOAD_SOURCE = "async-queue"
LOAD_REPORT_SECONDS = 1.0
PURGE_SECONDS = 60.0
WAKE_INTERVAL_SECONDS = 1.0
# Replica answers that mean it never ran the call (gateway/errors.py's retriable codes).
INTERRUPTED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

_package_config = functools.lru_cache(maxsize=256)(load_package_config)


def _reason(error: grpc.aio.AioRpcError) -> str:
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return ""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


class AsyncDispatcher:
    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        settings: rules.AsyncSettings,
        replicas_of: Callable[[str], list[ReplicaHandle]],
        package_dir: Callable[[Deployment], object],
        load: LoadTracker,
        wake: Callable[[str], None],
        max_message_bytes: int,
        on_finished: Callable[[AsyncRequestRow, Outcome], None] = lambda row, outcome: None,
        on_started: Callable[[AsyncRequestRow], None] = lambda row: None,
        on_load: Callable[[dict[str, tuple[int, int, str]]], None] = lambda load: None,
    ) -> None:
        self.store = store
        self.leadership = leadership
        self.settings = settings
        self.replicas_of = replicas_of
        self.package_dir = package_dir
        self.load = load
        self.wake = wake
        self.on_finished = on_finished
        self.on_started = on_started
        self.on_load = on_load
        self._options = grpc_message_options(max_message_bytes)
        self._poke = asyncio.Event()
        self._runs: dict[str, set[asyncio.Task]] = defaultdict(set)  # deployment -> its runs here
        self._busy: Counter[str] = Counter()  # replica id -> the queue's runs on it
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._dispatched: Counter[str] = Counter()  # runs started per deployment (load reports)
        self._reported: set[str] = set()
        self._last_report = 0.0
        self._last_purge = 0.0
        self._woken: dict[str, float] = {}
        self._mine: set[str] = set()  # requests a task of ours is running

    def poke(self) -> None:
        self._poke.set()

    async def run(self) -> None:
        try:
            while True:
                self._poke.clear()
                try:
                    await self.pass_once()
                except LeaseLost as exc:
                    log.warning("async dispatch pass stopped: %s", exc)
                except Exception:
                    log.exception("async dispatch pass failed")
                await wait_event(self._poke, self.settings.dispatch_interval_seconds)
        finally:
            await self._stop_runs()

    async def _stop_runs(self) -> None:
        """Deposed or stopping: runs in flight are abandoned, still IN_PROGRESS under this
        token, so the next leader queues them again."""
        tasks = [task for runs in self._runs.values() for task in runs]
        self._mine.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runs.clear()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def pass_once(self) -> None:
        settings = self.settings
        now = time.time()
        token = self.leadership.token
        # Runs no task of ours carries out (a previous leader's, or ours whose outcome could
        # not be recorded) go back to the queue: the at-least-once half of the guarantee.
        orphans = [
            run for run in await self.store.async_requests.running() if run[2] != token or run[0] not in self._mine
        ]
        purge = now - self._last_purge >= PURGE_SECONDS
        # An idle queue costs reads only: the write happens when there is something to change.
        if orphans or purge or await self.store.async_requests.any_expired(now):
            async with self.leadership.fenced_write() as tx:
                if orphans:
                    recovered = await tx.async_requests.recover(
                        orphans, settings.max_attempts, now, settings.webhook_delivery_seconds
                    )
                    if recovered:
                        log.info("async runs nobody carries out any more queued again: %d", recovered)
                await tx.async_requests.expire(now, settings.webhook_delivery_seconds)
                if purge:
                    await tx.async_requests.purge(now - settings.result_retention_seconds)
                    self._last_purge = now
        counts = await self.store.async_requests.load()
        self._report(counts)
        self.on_load(counts)
        for deployment_id, (queued, _running, _model) in counts.items():
            if queued:
                await self._dispatch(deployment_id)

    def _report(self, counts: dict[str, tuple[int, int, str]]) -> None:
        """The queue's load to the autoscaler, as a gateway reports its own (at most once a
        second unless it changed; a deployment whose queue emptied is reported once at 0)."""
        monotonic = time.monotonic()
        ids = set(counts) | self._reported
        if not ids or (monotonic - self._last_report < LOAD_REPORT_SECONDS and set(counts) == self._reported):
            return
        loads = []
        for deployment_id in sorted(ids):
            queued, running, _ = counts.get(deployment_id, (0, 0, ""))
            loads.append(
                rt.DeploymentLoad(
                    deployment_id=deployment_id,
                    in_flight=running,
                    queued=queued,
                    requests_total=self._dispatched[deployment_id],
                    average_concurrency=float(queued + running),
                )
            )
        self.load.record(rt.ReportLoadRequest(gateway_id=LOAD_SOURCE, loads=loads))
        self._reported = set(counts)
        self._last_report = monotonic

    async def _dispatch(self, deployment_id: str) -> None:
        deployment = await self.store.get_deployment(deployment_id)
        if deployment is None or not domain.should_run(deployment):
            return  # deactivated, deleted or failed: its requests wait (and expire) until it runs again
        ready = [
            h for h in self.replicas_of(deployment_id) if h.phase is ReplicaPhase.READY and h.port and not h.exited
        ]
        if not ready:
            monotonic = time.monotonic()
            if monotonic - self._woken.get(deployment_id, -WAKE_INTERVAL_SECONDS) >= WAKE_INTERVAL_SECONDS:
                self._woken[deployment_id] = monotonic
                self.wake(deployment_id)
            return
        try:
            concurrency = (await asyncio.to_thread(_package_config, self.package_dir(deployment))).predict_concurrency
        except Exception:  # an unreadable package: one slot per replica
            concurrency = 1
        free = rules.run_slots(len(ready), concurrency) - len(self._runs[deployment_id])
        if free <= 0:
            return
        token = self.leadership.token
        assert token is not None
        async with self.leadership.fenced_write() as tx:
            claimed = await tx.async_requests.claim(deployment_id, free, token, time.time())
        for row in claimed:
            self._dispatched[deployment_id] += 1
            replica = min(ready, key=lambda h: self._busy[h.id])
            self._busy[replica.id] += 1
            self.on_started(row)
            self._mine.add(row.id)
            task = asyncio.create_task(self._run(row, replica))
            runs = self._runs[deployment_id]
            runs.add(task)
            task.add_done_callback(functools.partial(self._ran, deployment_id, replica.id, row.id))

    def _ran(self, deployment_id: str, replica_id: str, request_id: str, task: asyncio.Task) -> None:
        self._runs[deployment_id].discard(task)
        self._mine.discard(request_id)
        self._busy[replica_id] -= 1
        if self._busy[replica_id] <= 0:
            del self._busy[replica_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("async run failed", exc_info=task.exception())
        self._poke.set()  # a slot is free

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=self._options)
        return channel

    async def _run(self, row: AsyncRequestRow, replica: ReplicaHandle) -> None:
        settings = self.settings
        metadata = (
            (REPLICA_TOKEN_HEADER, replica.token),
            (REQUEST_ID_KEY, row.id),
            (rules.ATTEMPT_METADATA_KEY, str(row.attempts)),
        )
        outcome: Outcome | None
        try:
            response = await rs_grpc.ReplicaServiceStub(self._channel(f"{replica.host}:{replica.port}")).Invoke(
                rs.InvokeRequest(payload=row.payload or b"", content_type=row.content_type),
                timeout=settings.run_timeout_seconds,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as error:
            outcome = None if error.code() in INTERRUPTED else self._failed(error)
        except Exception:  # not an answer: the run is put back (and counted)
            log.exception("async run %s could not be sent", row.id)
            outcome = None
        else:
            if len(response.payload) > settings.max_result_bytes:
                outcome = Outcome(
                    FAILED,
                    error_code=grpc.StatusCode.RESOURCE_EXHAUSTED.name,
                    error_reason="ASYNC_RESULT_TOO_LARGE",
                    error_message=f"the model's answer is {len(response.payload)} bytes; "
                    f"at most {settings.max_result_bytes} are stored",
                )
            else:
                outcome = Outcome(SUCCEEDED, response.payload, response.content_type or "application/json")
        if outcome is None and row.attempts >= settings.max_attempts:
            outcome = Outcome(
                FAILED,
                error_code=grpc.StatusCode.ABORTED.name,
                error_reason="ASYNC_ATTEMPTS_EXHAUSTED",
                error_message=f"each of {row.attempts} attempts was interrupted (its replica went away)",
            )
        with contextlib.suppress(LeaseLost):
            async with self.leadership.fenced_write() as tx:
                if outcome is None:
                    await tx.async_requests.put_back(row)
                    return
                recorded = await tx.async_requests.finish(row, outcome, time.time(), settings.webhook_delivery_seconds)
            if recorded:
                self.on_finished(row, outcome)

    @staticmethod
    def _failed(error: grpc.aio.AioRpcError) -> Outcome:
        return Outcome(
            FAILED,
            error_code=error.code().name,
            error_reason=_reason(error) or error.code().name,
            error_message=(error.details() or error.code().name)[:2048],
        )
