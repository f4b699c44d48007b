"""Process lifecycle helpers shared by the servers."""

from __future__ import annotations

import asyncio
import signal


async def wait_for_termination_signal() -> None:
    """Return on the first SIGTERM or SIGINT (then the caller shuts down gracefully)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
