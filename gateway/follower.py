"""Follows the controller's route stream; keeps serving the last table while the
controller is away and resynchronises (a full table) when it returns. Every version
applied is acknowledged, so the controller drains a replica only once this gateway
no longer routes to it."""

from __future__ import annotations

import asyncio
import logging

import grpc

from gateway.routing import RouteIndex
from slipway.channels import secure_or_insecure_aio_channel
from slipway.process import wait_event
from slipway.v1 import route_service_pb2 as rt
from slipway.v1 import route_service_pb2_grpc as rt_grpc

log = logging.getLogger("slipway.gateway.routes")


class RouteFollower:
    def __init__(
        self,
        controller_address: str,
        gateway_id: str,
        metadata: tuple[tuple[str, str], ...],
        controller_ca: bytes | None = None,
        retry_seconds: float = 0.5,
    ) -> None:
        self.controller_address = controller_address
        self.controller_ca = controller_ca
        self.gateway_id = gateway_id
        # The controller's internal token (RouteService takes nothing else).
        self.metadata = metadata
        self.retry_seconds = retry_seconds
        self.index = RouteIndex()
        self.synced = asyncio.Event()
        self._updated = asyncio.Event()
        self.connected = False
        self._last_failure: str | None = None
        self._acknowledging = True  # until a controller without AckRoutes says UNIMPLEMENTED

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

    async def run(self) -> None:
        while True:
            try:
                async with secure_or_insecure_aio_channel(self.controller_address, self.controller_ca) as channel:
                    stub = rt_grpc.RouteServiceStub(channel)
                    stream = stub.WatchRoutes(rt.WatchRoutesRequest(gateway_id=self.gateway_id), metadata=self.metadata)
                    async for message in stream:
                        if not self.connected:
                            if not message.reset:
                                break  # a stream always starts with the whole table; resubscribe
                            self.connected = True
                            log.info("following routes", extra={"fields": {"controller": self.controller_address}})
                        self._apply(message)
                        if self._acknowledging:
                            await self._acknowledge(stub, message.version)
            except grpc.aio.AioRpcError as error:
                if self.connected:
                    log.warning(
                        "route stream lost; serving the last table",
                        extra={"fields": {"code": error.code().name, "version": self.index.version}},
                    )
                # e.g. a TLS handshake refused, or this gateway's internal token: say why, once
                elif error.details() != self._last_failure:
                    log.warning(
                        "cannot follow the controller's routes",
                        extra={"fields": {"code": error.code().name, "details": error.details()}},
                    )
                self._last_failure = error.details()
            self.connected = False
            await asyncio.sleep(self.retry_seconds)
