"""The route broadcaster's drain barrier: a replica drains once every gateway that
acknowledges route versions has applied one without it."""

from __future__ import annotations

from controller.routes import RouteBroadcaster


async def test_only_gateways_that_acknowledge_hold_up_a_drain():
    routes = RouteBroadcaster(store=None, replicas_of=lambda deployment_id: [])
    routes.version = 1  # a published table (that routes nothing)
    silent, acking = routes.subscribe("grpcurl"), routes.subscribe("gw-1")
    await anext(silent)
    await anext(acking)
    assert await routes.wait_unrouted("r1", "d1", timeout=1), "no gateway has acknowledged anything yet"

    routes.acknowledge("gw-1", 1)
    routes.version = 2
    assert not await routes.wait_unrouted("r1", "d1", timeout=0.05), "gw-1 has not applied version 2"
    routes.acknowledge("gw-1", 2)
    assert await routes.wait_unrouted("r1", "d1", timeout=1)

    routes.version = 3
    await acking.aclose()  # a gateway that goes away holds up nothing
    assert await routes.wait_unrouted("r1", "d1", timeout=1)
    await silent.aclose()
