"""The leader lease's SQL (one row, table `leader_lease`, migration 6): who holds it, its
fencing token, and when it expires. Run inside a write transaction under the lease lock
(controller/store/locks.py): taking, renewing and releasing it exclusively, checking it
(the fence) shared — so the lease cannot change hands while a fenced write is open.

The token grows by one each time the lease changes holder, never otherwise: a controller
that checks `token = its token` in the transaction recording a runtime action knows no
other controller has held the lease since it took it.
"""

from __future__ import annotations

from typing import Any

from controller.store.backend import Executor, Row


class LeaseQueries:
    """Mixed into the write transaction (controller/store/write_tx.py's SqlWriteTx)."""

    _db: Executor

    async def _lease_row(self, exclusive: bool = False) -> Row:
        """The lease row (`exclusive`: read to be changed in this transaction)."""
        row = await self._db.fetchone("SELECT holder, token, expire_time FROM leader_lease WHERE id = 1")
        assert row is not None, "migration 6 inserts the lease row"
        return row

    async def take_lease(self, holder: str, now: float, duration: float, force: bool = False) -> int | None:
        """Takes or renews the lease for `holder` until now + duration: its token, or None
        while another holder's lease has not expired (unless `force`)."""
        current, token, expire_time = await self._lease_row(exclusive=True)
        if current != holder:
            if current and expire_time > now and not force:
                return None
            token += 1
        await self._exec_lease(
            "UPDATE leader_lease SET holder = ?, token = ?, expire_time = ? WHERE id = 1",
            (holder, token, now + duration),
        )
        return int(token)

    async def lease_is(self, holder: str, token: int, now: float) -> bool:
        """Whether `holder` still holds the lease with this token, unexpired (the fence)."""
        current, current_token, expire_time = await self._lease_row()
        return current == holder and current_token == token and expire_time > now

    async def release_lease(self, holder: str) -> None:
        """Lets the lease go (a clean shutdown) so another controller takes it at once."""
        await self._exec_lease("UPDATE leader_lease SET expire_time = 0 WHERE id = 1 AND holder = ?", (holder,))

    async def _exec_lease(self, sql: str, params: tuple[Any, ...]) -> None:
        await self._db.execute(sql, params)
