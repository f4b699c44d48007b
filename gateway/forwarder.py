"""Forwards requests to replicas: persistent channels, least-loaded choice, deadline
propagation, and a retry on another replica only when the first never took the
request (UNAVAILABLE: unreachable, or draining and refusing new calls; CANCELLED: the
replica's server stopped before the call ran — the gateway's own cancellations surface
as asyncio.CancelledError, never as a status)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sys
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any, TypeVar, cast

import grpc

from gateway.errors import GatewayError, from_replica, is_retriable, request_too_large
from gateway.follower import RouteFollower
from gateway.metrics import CLIENT_LEFT, GatewayMetrics, Observation
from slipway import latency, tracing
from slipway.internal_auth import REPLICA_TOKEN_HEADER
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES, grpc_message_options
from slipway.request_ids import METADATA_KEY as REQUEST_ID_KEY
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import resources_pb2
from slipway.v1 import route_service_pb2 as rt

# The protocol label of an observation no front made (never exported).
INTERNAL = "internal"
INVOKE = "/slipway.v1.ReplicaService/Invoke"
INVOKE_STREAM = "/slipway.v1.ReplicaService/InvokeStream"
INVOKE_WEBSOCKET = "/slipway.v1.ReplicaService/InvokeWebsocket"
# A wait bounded by the caller's deadline ends this much before it, so that the answer
# saying why reaches the caller before its deadline cancels the call.
DEADLINE_MARGIN_SECONDS = 0.05

log = logging.getLogger("slipway.gateway.forwarder")


class ReplicaChannel:
    """One persistent channel to a replica, with raw-bytes stubs (responses are not parsed)."""

    def __init__(self, address: str, options: list[tuple[str, int]]) -> None:
        self.address = address
        # The replica's token, sent on every call; refreshed from the route table (a replica
        # started later on the same address has another).
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.replica_id = ""
        self.channel = grpc.aio.insecure_channel(address, options=options)
        self.invoke = self.channel.unary_unary(
            INVOKE, request_serializer=rs.InvokeRequest.SerializeToString, response_deserializer=None
        )
        self.invoke_stream = self.channel.unary_stream(
            INVOKE_STREAM, request_serializer=rs.InvokeStreamRequest.SerializeToString, response_deserializer=None
        )
        self.invoke_websocket = self.channel.stream_stream(
            INVOKE_WEBSOCKET,
            request_serializer=rs.InvokeWebsocketRequest.SerializeToString,
            response_deserializer=rs.InvokeWebsocketResponse.FromString,
        )
        self.in_flight = 0


class LoadMeter:
    """One deployment's in-flight and queued requests, and their time-weighted average. In
    native mode (gateway/native/) HAProxy's own sessions for the deployment are added: `native`
    (its current sessions and queue) and `native_requests` (requests it forwarded itself)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.queued = 0
        self.requests_total = 0
        self.native = 0
        self.native_requests = 0
        # Answers since the previous report: by HTTP status class (2, 4, 5) and latency bucket.
        self.answered: dict[int, int] = {2: 0, 4: 0, 5: 0}
        self.latency = latency.empty()
        self.retries = 0
        self._area = 0.0
        self._since = self._last = time.monotonic()

    def _advance(self) -> None:
        now = time.monotonic()
        self._area += (self.in_flight + self.queued + self.native) * (now - self._last)
        self._last = now

    def set_native(self, sessions: int) -> None:
        if sessions != self.native:
            self._advance()
            self.native = sessions

    def change(self, in_flight: int = 0, queued: int = 0) -> None:
        self._advance()
        self.in_flight += in_flight
        self.queued += queued

    def answer(self, status_class: int, seconds: float) -> None:
        self.answered[status_class if status_class in (2, 4) else 5] += 1
        self.latency[latency.bucket_of(seconds)] += 1

    def take_answers(self) -> tuple[dict[int, int], list[int]]:
        """Answers since the previous call (by status class, by latency bucket)."""
        answered, counts = self.answered, self.latency
        self.answered, self.latency = {2: 0, 4: 0, 5: 0}, latency.empty()
        return answered, counts

    def take_average(self) -> float:
        """Average concurrency since the previous call."""
        self._advance()
        elapsed = self._last - self._since
        average = self._area / elapsed if elapsed > 0 else float(self.in_flight + self.queued + self.native)
        self._area, self._since = 0.0, self._last
        return average


F = TypeVar("F", bound=Callable[..., Any])


def observed(method: F) -> F:
    """Gives a call its front did not observe (a websocket session, the schema route) an
    observation of its own, counted in the deployment's load only and ended by the call's
    outcome; a call its front observes is ended by the front, with the status the caller got."""

    @functools.wraps(method)
    async def call(self: Forwarder, *args: Any, observation: Observation | None = None, **kwargs: Any) -> Any:
        if observation is not None:
            return await method(self, *args, observation=observation, **kwargs)
        own = self.metrics.start(INTERNAL, exported=False)
        with _ending(own):
            return await method(self, *args, observation=own, **kwargs)

    return cast(F, call)


def observed_stream(method: F) -> F:
    """`observed` for a stream: a caller that closes it once a chunk went out had its answer."""

    @functools.wraps(method)
    async def call(self: Forwarder, *args: Any, observation: Observation | None = None, **kwargs: Any) -> Any:
        if observation is not None:
            async with contextlib.aclosing(method(self, *args, observation=observation, **kwargs)) as items:
                async for item in items:
                    yield item
            return
        own = self.metrics.start(INTERNAL, exported=False)
        with _ending(own):
            async with contextlib.aclosing(method(self, *args, observation=own, **kwargs)) as items:
                async for item in items:
                    yield item

    return cast(F, call)


@contextlib.contextmanager
def _ending(observation: Observation) -> Iterator[None]:
    """Ends a call's own observation by how the call ended, as the HTTP status it amounts to."""
    try:
        yield
    except GatewayError as error:
        observation.done(str(error.http_status))
        raise
    except GeneratorExit:
        observation.done("200" if observation.delivered else str(CLIENT_LEFT))
        raise
    except asyncio.CancelledError:  # the caller went away
        observation.done(str(CLIENT_LEFT))
        raise
    except Exception:
        observation.done("500")
        raise
    else:
        observation.done("200")


class Forwarder:
    def __init__(
        self,
        follower: RouteFollower,
        replica_wait_seconds: float,
        max_queued: int,
        on_waiting: Callable[[rt.DeploymentRoute], None] = lambda deployment: None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.follower = follower
        self.metrics = metrics or GatewayMetrics(lambda: follower.index, enabled=False)
        self.metrics.watch_loads(self._load_counts)
        self.metrics.count_answers(self._answered)
        self.replica_wait_seconds = replica_wait_seconds
        self.max_queued = max_queued
        # The largest request body forwarded (and model answer accepted: the channels' limit).
        self.max_request_bytes = max_request_bytes
        self._channel_options = grpc_message_options(max_request_bytes)
        # Called when a request finds no ready replica (the gateway asks the controller to wake it).
        self.on_waiting = on_waiting
        self._channels: dict[str, ReplicaChannel] = {}
        self.loads: defaultdict[str, LoadMeter] = defaultdict(LoadMeter)
        # Requests sent again to another replica (the first refused it, or was unreachable).
        self.retries = 0

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.channel.close()
        self._channels.clear()

    def prune(self) -> None:
        """Close channels to replicas that left the route table and have nothing in flight."""
        live = {e.address for d in self.follower.index.deployments.values() for e in d.endpoints}
        for address in [a for a, c in self._channels.items() if a not in live and c.in_flight == 0]:
            channel = self._channels.pop(address)
            asyncio.get_running_loop().create_task(channel.channel.close())

    def _channel(self, endpoint: rt.Endpoint) -> ReplicaChannel:
        channel = self._channels.get(endpoint.address)
        if channel is None:
            channel = self._channels[endpoint.address] = ReplicaChannel(endpoint.address, self._channel_options)
        channel.metadata = ((REPLICA_TOKEN_HEADER, endpoint.token),)
        channel.replica_id = endpoint.replica_id
        return channel

    def _choose(self, endpoints, excluded: set[str]) -> ReplicaChannel | None:
        """Power of two choices on in-flight counts."""
        if len(endpoints) == 1 and not excluded:
            return self._channel(endpoints[0])
        candidates = [e for e in endpoints if e.address not in excluded]
        if not candidates:
            return None
        if len(candidates) == 1:
            return self._channel(candidates[0])
        a, b = (self._channel(endpoint) for endpoint in random.sample(candidates, 2))
        return a if a.in_flight <= b.in_flight else b

    async def _acquire(
        self,
        resolve: Callable[[], rt.DeploymentRoute],
        deadline: float,
        excluded: set[str],
        observation: Observation,
    ) -> tuple[rt.DeploymentRoute, ReplicaChannel]:
        """Resolve the target and pick a replica, waiting (bounded) for one to be ready.
        A refusal (no such target, no replica in time, a full queue) is counted by reason."""
        try:
            with tracing.span("route resolution"):
                deployment = resolve()
                tracing.annotate(
                    **{tracing.DEPLOYMENT_ID: deployment.deployment_id, tracing.MODEL_ID: deployment.model_id}
                )
        except GatewayError as error:
            self.metrics.refused(error.reason)
            raise
        observation.routed(deployment)
        channel = self._choose(deployment.endpoints, excluded)
        if channel is not None:
            return deployment, channel
        try:
            return await self._wait_for_replica(resolve, deployment, deadline, excluded, observation)
        except GatewayError as error:
            self.metrics.refused(error.reason)
            raise

    async def _wait_for_replica(
        self,
        resolve: Callable[[], rt.DeploymentRoute],
        deployment: rt.DeploymentRoute,
        deadline: float,
        excluded: set[str],
        observation: Observation,
    ) -> tuple[rt.DeploymentRoute, ReplicaChannel]:
        """The target is resolved again on every route change, so a request waiting for a
        deployment that fails (or is deleted, or deactivated) is answered at once."""
        started = time.monotonic()
        waiting = tracing.span("wake wait", **{tracing.DEPLOYMENT_ID: deployment.deployment_id})
        waiting.__enter__()
        caller_limit = deadline - DEADLINE_MARGIN_SECONDS
        wait_until = min(caller_limit, started + self.replica_wait_seconds)
        queued: LoadMeter | None = None
        try:
            while True:
                channel = self._choose(deployment.endpoints, excluded)
                if channel is not None:
                    return deployment, channel
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    raise self._no_ready_replica(deployment, time.monotonic() - started, wait_until == caller_limit)
                if queued is None:
                    queued = self.loads[deployment.deployment_id]
                    if queued.queued >= self.max_queued:
                        queued = None
                        raise GatewayError(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            "WAKE_QUEUE_FULL",
                            f"{self.max_queued} requests are already waiting for deployment "
                            f"{deployment.deployment_id} to have a ready replica",
                        )
                    queued.change(queued=1)
                self.on_waiting(deployment)
                await self.follower.changed(remaining)
                deployment = resolve()
                observation.routed(deployment)
        finally:
            if queued is not None:
                queued.change(queued=-1)
            self.metrics.waited(deployment, time.monotonic() - started)
            waiting.__exit__(*sys.exc_info())

    def _no_ready_replica(self, deployment: rt.DeploymentRoute, waited: float, by_deadline: bool) -> GatewayError:
        if by_deadline:
            code, bound = grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline"
        else:
            code, bound = grpc.StatusCode.UNAVAILABLE, f"the gateway waits at most {self.replica_wait_seconds:g}s"
        return GatewayError(
            code,
            "NO_READY_REPLICA",
            f"deployment {deployment.deployment_id} has no ready replica (state {_state_name(deployment.state)}) "
            f"after waiting {waited:.1f}s ({bound})",
        )

    def _check_size(self, request: rs.InvokeRequest | rs.InvokeStreamRequest) -> None:
        if len(request.payload) > self.max_request_bytes:
            error = request_too_large(len(request.payload), self.max_request_bytes)
            self.metrics.refused(error.reason)
            raise error

    @contextlib.contextmanager
    def _in_flight(self, deployment: rt.DeploymentRoute, channel: ReplicaChannel, retry: bool) -> Iterator[None]:
        load = self.loads[deployment.deployment_id]
        load.requests_total += 0 if retry else 1
        channel.in_flight += 1
        load.change(in_flight=1)
        try:
            yield
        finally:
            channel.in_flight -= 1
            load.change(in_flight=-1)

    @observed
    async def unary(
        self,
        resolve: Callable[[], rt.DeploymentRoute],
        request: rs.InvokeRequest,
        timeout: float,
        request_id: str = "",
        *,
        observation: Observation | None = None,
    ) -> tuple[rt.DeploymentRoute, bytes]:
        """Forward one request; returns the deployment that answered and the raw InvokeResponse bytes.
        `request_id` goes to the replica (x-slipway-request-id), which stamps the model's log lines with it."""
        assert observation is not None  # given by @observed
        self._check_size(request)
        deadline = time.monotonic() + timeout
        excluded: set[str] = set()
        while True:
            deployment, channel = await self._acquire(resolve, deadline, excluded, observation)
            with self._in_flight(deployment, channel, retry=bool(excluded)), _forward_span(deployment, channel):
                try:
                    return deployment, await channel.invoke(
                        request,
                        timeout=_remaining(deadline),
                        metadata=tracing.outgoing(_with_id(channel.metadata, request_id)),
                    )
                except grpc.aio.AioRpcError as error:
                    if not is_retriable(error):
                        raise from_replica(error, request.ByteSize()) from None
                    excluded.add(channel.address)
                    self._retried(deployment, channel, error)

    @observed_stream
    async def stream(
        self,
        resolve: Callable[[], rt.DeploymentRoute],
        request: rs.InvokeStreamRequest,
        timeout: float,
        request_id: str = "",
        *,
        observation: Observation | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Forward a streaming request; yields raw InvokeStreamResponse bytes.

        A retry happens only before the first chunk: after that the replica has the request.
        """
        assert observation is not None  # given by @observed
        self._check_size(request)
        deadline = time.monotonic() + timeout
        excluded: set[str] = set()
        while True:
            deployment, channel = await self._acquire(resolve, deadline, excluded, observation)
            started = False
            with self._in_flight(deployment, channel, retry=bool(excluded)), _forward_span(deployment, channel):
                try:
                    async for chunk in channel.invoke_stream(
                        request,
                        timeout=_remaining(deadline),
                        metadata=tracing.outgoing(_with_id(channel.metadata, request_id)),
                    ):
                        started = observation.delivered = True
                        yield chunk
                    return
                except grpc.aio.AioRpcError as error:
                    if not is_retriable(error) or started:
                        raise from_replica(error, request.ByteSize()) from None
                    excluded.add(channel.address)
                    self._retried(deployment, channel, error)

    def _retried(self, deployment: rt.DeploymentRoute, channel: ReplicaChannel, error: grpc.aio.AioRpcError) -> None:
        """A request goes to another replica: counted, and logged (a retry is a safety net; many
        of them mean replicas leave the route table too late)."""
        self.retries += 1
        self.loads[deployment.deployment_id].retries += 1
        log.info(
            "request retried on another replica",
            extra={
                "fields": {
                    "deployment_id": deployment.deployment_id,
                    "replica": channel.address,
                    "code": error.code().name,
                }
            },
        )

    @observed_stream
    async def websocket(
        self,
        resolve: Callable[[], rt.DeploymentRoute],
        frames: AsyncIterator[rs.InvokeWebsocketRequest],
        timeout: float,
        request_id: str = "",
        *,
        observation: Observation | None = None,
    ) -> AsyncGenerator[rs.InvokeWebsocketResponse, None]:
        """A websocket session with one replica (`timeout` bounds the whole session); no
        retry, as the replica may have acted on the first frame. Counts as one request in
        flight while it lasts."""
        assert observation is not None  # given by @observed
        deadline = time.monotonic() + timeout
        deployment, channel = await self._acquire(resolve, deadline, set(), observation)
        with self._in_flight(deployment, channel, retry=False):
            try:
                async for response in channel.invoke_websocket(
                    frames,
                    timeout=_remaining(deadline),
                    metadata=tracing.outgoing(_with_id(channel.metadata, request_id)),
                ):
                    observation.delivered = True
                    yield response
            except grpc.aio.AioRpcError as error:
                raise from_replica(error, 0) from None

    def _answered(self, deployment_id: str, status_class: int, seconds: float) -> None:
        self.loads[deployment_id].answer(status_class, seconds)

    def _load_counts(self) -> Iterator[tuple[str, int, int, int]]:
        for deployment_id, load in self.loads.items():
            yield deployment_id, load.in_flight + load.native, load.queued, load.retries

    def load_report(self) -> list[rt.DeploymentLoad]:
        report = []
        for deployment_id, load in self.loads.items():
            answered, counts = load.take_answers()
            report.append(
                rt.DeploymentLoad(
                    deployment_id=deployment_id,
                    in_flight=load.in_flight + load.native,
                    queued=load.queued,
                    requests_total=load.requests_total + load.native_requests,
                    average_concurrency=load.take_average(),
                    responses_2xx=answered[2],
                    responses_4xx=answered[4],
                    responses_5xx=answered[5],
                    latency_bucket_counts=counts if any(counts) else (),
                )
            )
        return report


def _with_id(metadata: tuple[tuple[str, str], ...], request_id: str) -> tuple[tuple[str, str], ...]:
    return (*metadata, (REQUEST_ID_KEY, request_id)) if request_id else metadata


def _forward_span(deployment: rt.DeploymentRoute, channel: ReplicaChannel) -> contextlib.AbstractContextManager:
    """One attempt at the replica (a retry elsewhere is another)."""
    if not tracing.enabled():
        return tracing.span("forward")  # the shared no-op: no attributes built
    return tracing.client_span(
        "forward",
        **{
            tracing.DEPLOYMENT_ID: deployment.deployment_id,
            tracing.MODEL_ID: deployment.model_id,
            tracing.REPLICA_ID: channel.replica_id,
            tracing.REPLICA_ADDRESS: channel.address,
        },
    )


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _state_name(state: int) -> str:
    return resources_pb2.DeploymentState.Name(state).removeprefix("DEPLOYMENT_STATE_")
