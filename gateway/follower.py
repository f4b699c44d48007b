"""Follows the controller's route stream; keeps serving the last table while the
controller is away and resynchronises (a full table) when it returns. Every version
applied is acknowledged, so the controller drains a replica only once this gateway
no longer routes to it.

Given several controller addresses, the follower uses one at a time, in order: when
its stream cannot be opened or is lost it moves to the next one at once, and waits
`retry_seconds` only after a whole round failed. The channel of the controller it
follows also carries the gateway's load reports and wake calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc

from gateway.routing import RouteIndex
from slipway.addresses import parse_addresses
from slipway.channels import STREAM_KEEPALIVE_OPTIONS, secure_or_insecure_aio_channel
from slipway.process import wait_event
from slipway.v1 import route_service_pb2 as rt
from slipway.v1 import route_service_pb2_grpc as rt_grpc

log = logging.getLogger("slipway.gateway.routes")


class RouteFollower:
    def __init__(
        self,
        controller_addresses: str | Sequence[str],
        gateway_id: str,
        metadata: tuple[tuple[str, str], ...],
        controller_ca: bytes | None = None,
        retry_seconds: float = 0.5,
    ) -> None:
        self.controller_addresses = parse_addresses(controller_addresses)
        self._current = 0
        self.controller_ca = controller_ca
        self.gateway_id = gateway_id
        # The controller's internal token (RouteService takes nothing else).
        self.metadata = metadata
        self.retry_seconds = retry_seconds
        self.index = RouteIndex()
        self.synced = asyncio.Event()
        self._updated = asyncio.Event()
        self.connected = False
        # The channel of the stream being followed (None between streams).
        self.channel: grpc.aio.Channel | None = None
        self._last_failure: str | None = None
        self._acknowledging = True  # until a controller without AckRoutes says UNIMPLEMENTED
        # Awaited after each table is applied and before it is acknowledged: the native data
        # plane applies the table to its proxy here, so a replica is drained only once the
        # proxy, too, has stopped routing to it.
        self.on_applied: Callable[[], Awaitable[None]] | None = None

    @property
    def controller_address(self) -> str:
        """The controller followed now, or tried next."""
        return self.controller_addresses[self._current]

    async def _acknowledge(self, stub: rt_grpc.RouteServiceStub, version: int) -> None:
        try:
            await stub.AckRoutes(
                rt.AckRoutesRequest(gateway_id=self.gateway_id, version=version), timeout=5, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise
            self._acknowledging = False
            log.warning("the controller takes no route acknowledgements; following without them")

    async def changed(self, timeout: float) -> bool:
        """Wait for the next table (True) or until `timeout` passes (False)."""
        return await wait_event(self._updated, timeout)

    def _apply(self, message: rt.WatchRoutesResponse) -> None:
        self.index.apply(message)
        self.synced.set()
        updated, self._updated = self._updated, asyncio.Event()
        updated.set()

    async def _follow(self, address: str) -> None:
        """One stream from one controller, until it ends or fails."""
        async with secure_or_insecure_aio_channel(address, self.controller_ca, STREAM_KEEPALIVE_OPTIONS) as channel:
            stub = rt_grpc.RouteServiceStub(channel)
            request = rt.WatchRoutesRequest(gateway_id=self.gateway_id, acknowledges=self._acknowledging)
            stream = stub.WatchRoutes(request, metadata=self.metadata)
            try:
                async for message in stream:
                    if not self.connected:
                        if not message.reset:
                            return  # a stream always starts with the whole table; resubscribe
                        self.connected, self.channel = True, channel
                        log.info("following routes", extra={"fields": {"controller": address}})
                    self._apply(message)
                    if self.on_applied is not None:
                        await self.on_applied()
                    if self._acknowledging:
                        await self._acknowledge(stub, message.version)
            finally:
                self.channel = None

    async def run(self) -> None:
        failed_in_a_row = 0
        while True:
            address = self.controller_address
            try:
                await self._follow(address)
            except grpc.aio.AioRpcError as error:
                if self.connected:
                    log.warning(
                        "route stream lost; serving the last table",
                        extra={
                            "fields": {"controller": address, "code": error.code().name, "version": self.index.version}
                        },
                    )
                # e.g. a TLS handshake refused, or this gateway's internal token: say why, once
                elif error.details() != self._last_failure:
                    log.warning(
                        "cannot follow the controller's routes",
                        extra={
                            "fields": {"controller": address, "code": error.code().name, "details": error.details()}
                        },
                    )
                self._last_failure = error.details()
            failed_in_a_row = 0 if self.connected else failed_in_a_row + 1
            self.connected = False
            self._current = (self._current + 1) % len(self.controller_addresses)
            if failed_in_a_row and failed_in_a_row % len(self.controller_addresses) == 0:
                await asyncio.sleep(self.retry_seconds)
