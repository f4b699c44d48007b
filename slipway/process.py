"""Process lifecycle helpers shared by the servers."""

from __future__ import annotations

import asyncio
import signal


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set (True) or `timeout` seconds pass (False).

    Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the
    event is set, and a loop waiting on it then never stops.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def wait_for_termination_signal() -> None:
    """Return on the first SIGTERM or SIGINT (then the caller shuts down gracefully)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
