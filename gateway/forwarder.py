"""Forwards requests to replicas: persistent channels, least-loaded choice, deadline
propagation, and a retry on another replica only when the first never took the
request (UNAVAILABLE: unreachable, or draining and refusing new calls)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import grpc

from gateway.errors import GatewayError, from_replica
from gateway.follower import RouteFollower
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import resources_pb2
from slipway.v1 import route_service_pb2 as rt

INVOKE = "/slipway.v1.ReplicaService/Invoke"
INVOKE_STREAM = "/slipway.v1.ReplicaService/InvokeStream"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class ReplicaChannel:
    """One persistent channel to a replica, with raw-bytes stubs (responses are not parsed)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.invoke = self.channel.unary_unary(
            INVOKE, request_serializer=rs.InvokeRequest.SerializeToString, response_deserializer=None
        )
        self.invoke_stream = self.channel.unary_stream(
            INVOKE_STREAM, request_serializer=rs.InvokeStreamRequest.SerializeToString, response_deserializer=None
        )
        self.in_flight = 0


class Forwarder:
    def __init__(self, follower: RouteFollower, replica_wait_seconds: float) -> None:
        self.follower = follower
        self.replica_wait_seconds = replica_wait_seconds
        self._channels: dict[str, ReplicaChannel] = {}
        self.in_flight: Counter[str] = Counter()
        self.queued: Counter[str] = Counter()
        self.requests_total: Counter[str] = Counter()

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

    def _channel(self, address: str) -> ReplicaChannel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = ReplicaChannel(address)
        return channel

    def _choose(self, endpoints, excluded: set[str]) -> ReplicaChannel | None:
        """Power of two choices on in-flight counts."""
        candidates = [e.address for e in endpoints if e.address not in excluded]
        if not candidates:
            return None
        if len(candidates) == 1:
            return self._channel(candidates[0])
        a, b = (self._channel(address) for address in random.sample(candidates, 2))
        return a if a.in_flight <= b.in_flight else b

    async def _acquire(
        self, resolve: Callable[[], rt.DeploymentRoute], deadline: float, excluded: set[str]
    ) -> tuple[rt.DeploymentRoute, ReplicaChannel]:
        """Resolve the target and pick a replica, waiting (bounded) for one to be ready."""
        wait_until = min(deadline, time.monotonic() + self.replica_wait_seconds)
        deployment = resolve()
        queued_for = None
        try:
            while True:
                channel = self._choose(deployment.endpoints, excluded)
                if channel is not None:
                    return deployment, channel
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED if wait_until >= deadline else grpc.StatusCode.UNAVAILABLE
                    raise GatewayError(
                        code,
                        "NO_READY_REPLICA",
                        f"deployment {deployment.deployment_id} has no ready replica "
                        f"(state {_state_name(deployment.state)}) after waiting {self.replica_wait_seconds:g}s",
                    )
                if queued_for is None:
                    queued_for = deployment.deployment_id
                    self.queued[queued_for] += 1
                await self.follower.changed(remaining)
                deployment = resolve()
        finally:
            if queued_for is not None:
                self.queued[queued_for] -= 1

    async def unary(
        self, resolve: Callable[[], rt.DeploymentRoute], request: rs.InvokeRequest, timeout: float
    ) -> tuple[rt.DeploymentRoute, bytes]:
        """Forward one request; returns the deployment that answered and the raw InvokeResponse bytes."""
        deadline = time.monotonic() + timeout
        excluded: set[str] = set()
        while True:
            deployment, channel = await self._acquire(resolve, deadline, excluded)
            deployment_id = deployment.deployment_id
            self.requests_total[deployment_id] += 1 if not excluded else 0
            channel.in_flight += 1
            self.in_flight[deployment_id] += 1
            try:
                return deployment, await channel.invoke(request, timeout=max(deadline - time.monotonic(), 0.001))
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.UNAVAILABLE:
                    excluded.add(channel.address)
                    continue
                raise from_replica(error) from None
            finally:
                channel.in_flight -= 1
                self.in_flight[deployment_id] -= 1

    async def stream(
        self, resolve: Callable[[], rt.DeploymentRoute], request: rs.InvokeStreamRequest, timeout: float
    ) -> AsyncIterator[bytes]:
        """Forward a streaming request; yields raw InvokeStreamResponse bytes.

        A retry happens only before the first chunk: after that the replica has the request.
        """
        deadline = time.monotonic() + timeout
        excluded: set[str] = set()
        while True:
            deployment, channel = await self._acquire(resolve, deadline, excluded)
            deployment_id = deployment.deployment_id
            self.requests_total[deployment_id] += 1 if not excluded else 0
            channel.in_flight += 1
            self.in_flight[deployment_id] += 1
            started = False
            try:
                call = channel.invoke_stream(request, timeout=max(deadline - time.monotonic(), 0.001))
                async for chunk in call:
                    started = True
                    yield chunk
                return
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.UNAVAILABLE and not started:
                    excluded.add(channel.address)
                    continue
                raise from_replica(error) from None
            finally:
                channel.in_flight -= 1
                self.in_flight[deployment_id] -= 1

    def load_report(self) -> list[rt.DeploymentLoad]:
        ids = set(self.in_flight) | set(self.queued) | set(self.requests_total)
        return [
            rt.DeploymentLoad(
                deployment_id=d, in_flight=self.in_flight[d], queued=self.queued[d], requests_total=self.requests_total[d]
            )
            for d in sorted(ids)
        ]


def _state_name(state: int) -> str:
    return resources_pb2.DeploymentState.Name(state).removeprefix("DEPLOYMENT_STATE_")
