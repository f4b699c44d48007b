"""The local process runtime with its fork server: real replica processes."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal

from controller.runtime import LocalProcessRuntime

ECHO = pathlib.Path(__file__).resolve().parent.parent / "examples" / "echo"


async def test_a_replica_stopped_right_after_it_was_forked_still_exits(tmp_path):
    """SIGTERM sent the moment the fork server answers must not be lost in the child."""
    runtime = LocalProcessRuntime(tmp_path, tmp_path / "packages", on_change=lambda handle: None, drain_seconds=1)
    await runtime.prewarm()
    try:
        for n in range(8):
            handle = await runtime.start(f"rfork{n:08d}", "d1", 1, ECHO, {})
            os.kill(handle.pid, signal.SIGTERM)
            exited = handle._tasks[-1]
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout=10)
            except TimeoutError:
                os.kill(handle.pid, signal.SIGKILL)
                raise AssertionError(f"replica {n} ignored SIGTERM sent right after the fork") from None
            assert handle.exited
    finally:
        await runtime.close()
