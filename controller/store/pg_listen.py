"""LISTEN for other controllers' changes (controller/store/changes.py) on a PostgreSQL
connection of its own, kept up: when it is lost (the server restarted, a proxy dropped it,
an operator ended its backend) it is opened again, with backoff, and then every listener is
told to read again what it follows (`on_reset`), because what was announced while nobody
listened is gone — NOTIFY keeps nothing for a session that is not there.

A connection that is closed is noticed at once (asyncpg's termination callback); one that
silently stopped answering (a dead peer, a dropped NAT entry) is noticed by a `SELECT 1`
every CHECK_SECONDS that gets no answer within CHECK_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from controller.store.backend import StoreOpenError
from controller.store.changes import CHANNEL

log = logging.getLogger("slipway.store")

APPLICATION_NAME = "slipway-listen"  # how the connection shows in pg_stat_activity
CONNECT_TIMEOUT_SECONDS = 10.0
CHECK_SECONDS = 5.0
FIRST_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 5.0
CONNECT_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def _nothing() -> None:
    return None


class Listener:
    def __init__(
        self, url: str, description: str, on_payload: Callable[[str], None], on_reset: Callable[[], None]
    ) -> None:
        self._url = url
        self._description = description
        self._on_payload = on_payload
        self._on_reset = on_reset
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task | None = None
        # Times the connection was lost and listening began again (tests, logs).
        self.relistens = 0
        # Awaited before each attempt to listen again (a test holds it to write meanwhile).
        self.before_relisten: Callable[[], Awaitable[None]] = _nothing

    @property
    def server_pid(self) -> int | None:
        return self._conn.get_server_pid() if self._conn is not None and not self._conn.is_closed() else None

    async def start(self) -> None:
        try:
            await self._connect()
        except CONNECT_ERRORS as exc:
            raise StoreOpenError(f"cannot listen for changes on {self._description}: {exc}") from exc
        self._task = asyncio.create_task(self._keep_listening())

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self._url,
            timeout=CONNECT_TIMEOUT_SECONDS,
            server_settings={"application_name": APPLICATION_NAME},
        )
        try:
            await conn.add_listener(CHANNEL, lambda _conn, _pid, _channel, payload: self._on_payload(payload))
        except BaseException:
            conn.terminate()
            raise
        self._lost.clear()
        conn.add_termination_listener(lambda closed: self._lost.set() if closed is self._conn else None)
        self._conn = conn

    async def _keep_listening(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), CHECK_SECONDS)
            if not self._lost.is_set() and await self._answers():
                continue
            log.warning("lost the connection listening for other controllers' changes on %s", self._description)
            old, self._conn = self._conn, None
            if old is not None:
                old.terminate()
            delay = FIRST_RETRY_SECONDS
            while True:
                await self.before_relisten()
                try:
                    await self._connect()
                    break
                except CONNECT_ERRORS as exc:
                    log.warning("cannot listen on %s yet (%s); again in %.1f s", self._description, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_SECONDS)
            self.relistens += 1
            log.info("listening again on %s: every watcher reads its state afresh", self._description)
            try:
                self._on_reset()
            except Exception:
                log.exception("a listener failed on a reset")

    async def _answers(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), CHECK_SECONDS)
        except (TimeoutError, *CONNECT_ERRORS):
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_SECONDS)
