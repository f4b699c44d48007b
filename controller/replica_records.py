"""The leader's records of its replicas (table `replicas`), every one fenced: written in a
transaction that first checks the leader lease is still ours with our token
(controller/leader.py), so a controller that lost the lease — paused past it, say —
neither records nor, since each runtime action is preceded by its record or by `fence`,
takes any action on a replica. A lone controller without leadership writes unfenced.
"""

from __future__ import annotations

import contextlib

from controller.leader import Leadership
from controller.store import ReplicaRow, Store, WriteTx


class ReplicaRecords:
    def __init__(self, store: Store, leadership: Leadership | None = None) -> None:
        self.store = store
        self.leadership = leadership

    def write(self) -> contextlib.AbstractAsyncContextManager[WriteTx]:
        """A transaction refused (LeaseLost, nothing written) unless we lead."""
        return self.leadership.fenced_write() if self.leadership is not None else self.store.write()

    async def fence(self) -> None:
        """LeaseLost unless we lead: checked before a runtime action that records nothing first
        (a stop, stopping unrecorded processes)."""
        async with self.write():
            pass

    async def starting(self, replica_id: str, deployment_id: str, revision: int, start_time: float) -> None:
        """Recorded before its process exists, without a pid: a successor that adopts meanwhile
        counts it stopped."""
        async with self.write() as tx:
            await tx.insert_replica(ReplicaRow(replica_id, deployment_id, revision, None, None, start_time, None, None))

    async def started(self, replica_id: str, pid: int | None, start_time: float) -> None:
        async with self.write() as tx:
            await tx.update_replica(replica_id, pid=pid, start_time=start_time)

    async def ready(
        self, replica_id: str, port: int | None, ready_time: float | None, http_port: int | None = None
    ) -> None:
        async with self.write() as tx:
            await tx.update_replica(replica_id, port=port, ready_time=ready_time, http_port=http_port)

    async def stopped(self, replica_id: str, stop_time: float) -> None:
        async with self.write() as tx:
            await tx.update_replica(replica_id, stop_time=stop_time)

    async def exited(self, replica_id: str, stop_time: float, port: int | None) -> None:
        async with self.write() as tx:
            await tx.update_replica(replica_id, stop_time=stop_time, port=port)
