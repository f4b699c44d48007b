"""Which controller is the leader: the one that runs the reconciler, the autoscaler and the
replica runtime. Every controller serves the management API; one leads.

The leader holds a lease in the database (controller/store/lease.py), renewed every
`renew_seconds` and valid for `duration_seconds`. Taking it from a holder whose lease has
expired raises the fencing token. Every runtime action and every write only the leader
makes (its replica records, controller/replica_records.py; its observations,
controller/observations.py) checks, in its write transaction, that the lease is still
ours with our token (`Leadership.fenced_write`), and before acting also
that our own clock says the lease has not run out (`held`): a controller that was paused
(SIGSTOP) past its lease finds both false when it resumes, so it never starts or stops a
replica, nor overwrites what its successor recorded, after another controller has taken
over. On SQLite, whose file only one
controller uses (the one of its data directory), the controller takes the lease at start
even from an unexpired holder (its own predecessor, killed) and so restarts without waiting.

Wall clocks of the controllers must agree to well within `duration_seconds` (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from controller.errors import Unavailable
from controller.store import Store, WriteTx

log = logging.getLogger("slipway.leader")


@dataclass
class LeaseSettings:
    # How long a taken or renewed lease lasts: a dead leader is replaced within about this long.
    duration_seconds: float = 5.0
    # How often the leader renews it (and a follower tries to take it).
    renew_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_seconds < self.duration_seconds:
            raise ValueError(
                f"lease renew_seconds ({self.renew_seconds}) must be above 0 and below "
                f"duration_seconds ({self.duration_seconds})"
            )


class LeaseLost(Unavailable):
    """This controller is no longer the leader: the runtime action (or the leader's record)
    was not taken. Reaching a caller (a live reload's outcome, say), it is UNAVAILABLE
    LEASE_LOST: what the call committed before stands, so only a call with a request_id is
    safely sent again (unlike NOT_LEADER, refused before anything was done)."""

    def __init__(self, message: str) -> None:
        super().__init__("LEASE_LOST", message)


class Leadership:
    def __init__(
        self,
        store: Store,
        settings: LeaseSettings,
        on_elected: Callable[[], Awaitable[None]],
        on_deposed: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.settings = settings
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.token: int | None = None
        self._deadline = 0.0  # time.monotonic() after which our lease may have run out
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self.leading = False
        # Runtime actions refused because the lease was lost (for tests and logs).
        self.refused = 0

    def held(self) -> bool:
        """By our own clock, the lease we last took or renewed has not run out."""
        return self.token is not None and time.monotonic() < self._deadline

    async def try_take(self, force: bool = False) -> bool:
        """One attempt to take or renew the lease (`force`: even from an unexpired holder);
        whether we hold it now."""
        started = time.monotonic()
        async with self.store.write() as tx:
            token = await tx.take_lease(self.holder, time.time(), self.settings.duration_seconds, force)
        if token is None:
            self.token = None
            return False
        if token != self.token:
            log.info("took the leader lease", extra={"fields": {"holder": self.holder, "token": token}})
        self.token = token
        self._deadline = started + self.settings.duration_seconds
        return True

    async def check(self, tx: WriteTx) -> None:
        """The fence, inside the transaction that records a runtime action: LeaseLost unless
        the lease is still ours with our token."""
        token = self.token
        if not self.held() or token is None or not await tx.lease_is(self.holder, token, time.time()):
            self.refused += 1
            raise LeaseLost(f"controller {self.holder} no longer holds the leader lease (token {token})")

    @contextlib.asynccontextmanager
    async def fenced_write(self) -> AsyncIterator[WriteTx]:
        """A write transaction that is refused (LeaseLost, nothing written) unless we lead.
        The fence is checked last, before the commit: the lease lock ranks after every other
        lock (controller/store/locks.py), and held to the commit it keeps the lease from
        changing hands while the writes are made."""
        if not self.held():
            self.refused += 1
            raise LeaseLost(f"controller {self.holder}'s leader lease has run out")
        async with self.store.write() as tx:
            yield tx
            await self.check(tx)

    async def step(self, force: bool = False) -> None:
        """Take or renew the lease, and start or stop leading accordingly."""
        try:
            holding = await self.try_take(force)
        except Exception:
            log.exception("could not renew the leader lease")
            holding = self.held()
        if holding and not self.leading:
            self.leading = True
            await self._on_elected()
        elif not holding and self.leading:
            self.leading = False
            log.warning("lost the leader lease: no longer running replicas", extra={"fields": {"holder": self.holder}})
            await self._on_deposed()

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.settings.renew_seconds)

    async def release(self) -> None:
        if self.token is not None:
            with contextlib.suppress(Exception):
                async with self.store.write() as tx:
                    await tx.release_lease(self.holder)
        self.token = None
