"""The route broadcaster's drain barrier: a replica drains once every gateway that
acknowledges route versions has applied one without it."""

from __future__ import annotations

import asyncio

from controller.routes import LoadTracker, RouteBroadcaster
from slipway.v1 import route_service_pb2 as rt


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


async def test_a_gateway_that_joins_or_reconnects_mid_drain_holds_it_until_it_acknowledges():
    routes = RouteBroadcaster(store=None, replicas_of=lambda deployment_id: [])
    routes.version = 5  # the table no longer routes to r1; gw-1 has applied it
    steady = routes.subscribe("gw-1", acknowledges=True)
    await anext(steady)
    routes.acknowledge("gw-1", 5)
    assert await routes.wait_unrouted("r1", "d1", timeout=1)

    # gw-2 opens its stream: until it acknowledges it may hold an older table that routes to r1.
    joining = routes.subscribe("gw-2", acknowledges=True)
    await anext(joining)
    assert routes.following() == {"gw-1": 5, "gw-2": 0}
    drain = asyncio.create_task(routes.wait_unrouted("r1", "d1", timeout=5))
    await asyncio.sleep(0.05)
    assert not drain.done(), "drained before the joining gateway applied a table without r1"
    routes.acknowledge("gw-2", 5)
    assert await asyncio.wait_for(drain, 1)

    # gw-1 reconnects (a new stream under the same id): it counts from zero again.
    reconnected = routes.subscribe("gw-1", acknowledges=True)
    await anext(reconnected)
    assert routes.following()["gw-1"] == 0
    assert not await routes.wait_unrouted("r1", "d1", timeout=0.05)
    await steady.aclose()  # the old stream ending does not drop the new one
    assert routes.following()["gw-1"] == 0
    routes.acknowledge("gw-1", 5)
    assert await routes.wait_unrouted("r1", "d1", timeout=1)

    # Several gateways: the drain waits for the slowest.
    routes.version = 6
    routes.acknowledge("gw-1", 6)
    assert not await routes.wait_unrouted("r1", "d1", timeout=0.05), "gw-2 is still at version 5"
    await joining.aclose()  # ... unless it goes away
    assert await routes.wait_unrouted("r1", "d1", timeout=1)
    await reconnected.aclose()
    assert routes.following() == {}


def _report(gateway_id: str, deployment_id: str, concurrency: float, requests_total: int) -> rt.ReportLoadRequest:
    return rt.ReportLoadRequest(
        gateway_id=gateway_id,
        loads=[
            rt.DeploymentLoad(
                deployment_id=deployment_id, average_concurrency=concurrency, requests_total=requests_total
            )
        ],
    )


def test_load_from_every_gateway_is_summed_and_a_silent_gateway_expires(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("controller.routes.time.monotonic", lambda: now[0])
    tracker = LoadTracker(ttl_seconds=10)
    tracker.record(_report("gw-1", "d1", 2.5, 100))
    tracker.record(_report("gw-2", "d1", 1.5, 40))
    tracker.record(_report("gw-2", "d2", 9.0, 7))
    assert tracker.observe("d1") == (4.0, 140)
    assert set(tracker.by_gateway("d1")) == {"gw-1", "gw-2"}

    now[0] += 6
    tracker.record(_report("gw-1", "d1", 3.0, 130))  # gw-2 goes silent
    assert tracker.observe("d1") == (4.5, 170)
    now[0] += 6  # gw-2's last report is 12 s old
    assert tracker.observe("d1") == (3.0, 170), "a silent gateway's load counts no more; its requests stay counted"
    assert tracker.gateways() == {"gw-1"}, "its entries are dropped"
    assert tracker.observe("d2") == (0.0, 7)

    # A gateway restarted under the same id reports a smaller count: all of it is new.
    tracker.record(_report("gw-1", "d1", 1.0, 5))
    assert tracker.observe("d1") == (1.0, 175)
