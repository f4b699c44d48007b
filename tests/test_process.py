"""Process helpers shared by the servers."""

from __future__ import annotations

import asyncio

from slipway.process import wait_event


async def test_wait_event_reports_set_or_timed_out():
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True


async def test_a_loop_waiting_on_an_event_stops_when_cancelled_as_the_event_is_set():
    """The reconciler's loop shape. With asyncio.wait_for (Python 3.11) this cancellation
    is swallowed and the loop runs on, so the controller never finished stopping."""
    wake = asyncio.Event()
    passes = 0

    async def loop() -> None:
        nonlocal passes
        while True:
            passes += 1
            await wait_event(wake, 10)
            wake.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    wake.set()
    await asyncio.sleep(0)  # the wait has completed; the loop has not resumed yet
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done and task.cancelled(), f"the loop ignored its cancellation after {passes} passes"
