"""The locks a write transaction takes where writes overlap (PostgreSQL: several controllers,
and several writer connections in each). SQLite runs one write transaction at a time
(BEGIN IMMEDIATE) and takes none of these.

What each rule of the store needs, and what guards it on PostgreSQL:

- at most one production and one promotion in flight per model; deployment names unique per
  model; a model's next deployment number; the order of its events: every statement that
  names a model or one of its deployments first takes that model's lock (`pg_advisory_xact_lock`
  on a key derived from the model's name, which never changes), so the read-check-write of
  one model's rules runs as if alone. Different models' writes overlap.
- environments (which deployment each routes to, its promotion in flight, its settings) are a
  model's rows like its deployments: read and written under that model's lock.
- one live model per name (a push creating it): the same lock, taken by the name before the
  model is looked up; the unique index `models_live_name` backs it.
- a `request_id` applied once, across controllers: the transaction claims it first, by
  inserting its row (`INSERT … ON CONFLICT DO NOTHING`): a second transaction with the same
  request_id waits on that key until the first ends, then finds its result (or claims it, if
  the first rolled back).
- IDs never reused: random IDs under UNIQUE constraints, numbers from identity columns, rows
  never removed. Nothing to lock.
- API keys (at most so many live) and secrets (at most so many): one lock each, for the
  transactions that read or change them.
- the leader lease and its fence: taking, renewing or releasing it takes the lease lock
  exclusively; the fence (checking the lease in the transaction that records a runtime
  action) takes it shared, so the lease cannot change hands while a fenced write is open.
- replica rows: written only by the leader, in fenced transactions. Nothing else to lock.

Deadlock-free by order: locks are taken in rank order — the request claim, then one model,
then a package row (`record_package`: an insert of the same digest waits for the other),
then the API keys lock, the secrets lock, the lease lock — and a transaction only waits for a
lock of a higher rank than every lock it holds. A second lock of the rank it already holds
(a second model) is only tried, never waited for: if another transaction has it, this one is
refused (ABORTED `WRITE_CONFLICT`, nothing written; the caller retries). No transaction ever
waits while holding what the one it waits for needs next, so none waits forever. A lock
asked for out of rank order is a bug in the caller and raises at once, on every backend
that locks (the tests run every transaction on PostgreSQL).
"""

from __future__ import annotations

import collections
import enum
import hashlib

from controller.errors import Aborted
from controller.store.backend import Backend, Executor


class Rank(enum.IntEnum):
    REQUEST = 0
    MODEL = 1
    PACKAGE = 2
    API_KEYS = 3
    SECRETS = 4
    LEASE = 5


def lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for `name` (collisions only serialise more)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, person=b"slipway").digest(), signed=True)


class LRU(collections.OrderedDict[str, str]):
    """A bounded map (IDs and names never change: an evicted entry is only read again)."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self._bound = bound

    def remember(self, key: str, value: str) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self._bound:
            self.popitem(last=False)


CACHE_BOUND = 100_000


class ModelNames:
    """Which model a deployment belongs to and what a model is called: both fixed when the
    row is created, so read once (outside any transaction, on the reader) and remembered."""

    def __init__(self, reader: Executor) -> None:
        self._reader = reader
        self.model_of_deployment = LRU(CACHE_BOUND)
        self.name_of_model = LRU(CACHE_BOUND)

    async def of_deployment(self, deployment_id: str) -> str | None:
        """The name of the deployment's model; None if no such deployment has committed."""
        model_id = self.model_of_deployment.get(deployment_id)
        if model_id is not None:
            return await self.of_model(model_id)
        row = await self._reader.fetchone(
            "SELECT d.model_id, m.name FROM deployments d JOIN models m ON m.id = d.model_id WHERE d.id = ?",
            (deployment_id,),
        )
        if row is None:
            return None
        self.model_of_deployment.remember(deployment_id, row[0])
        self.name_of_model.remember(row[0], row[1])
        return str(row[1])

    async def of_model(self, model_id: str) -> str | None:
        name = self.name_of_model.get(model_id)
        if name is not None:
            return name
        row = await self._reader.fetchone("SELECT name FROM models WHERE id = ?", (model_id,))
        if row is None:
            return None
        self.name_of_model.remember(model_id, row[0])
        return str(row[0])


class TxLocks:
    """The locks one write transaction holds, taken in rank order (see the module's doc)."""

    def __init__(self, backend: Backend, executor: Executor, names: ModelNames) -> None:
        self.active = backend.concurrent_writes
        self._backend = backend
        self._executor = executor
        self.names = names
        self._held: set[tuple[Rank, str]] = set()
        self._top: Rank | None = None

    def holds_model(self, name: str) -> bool:
        return not self.active or (Rank.MODEL, name) in self._held

    async def model(self, name: str) -> None:
        await self.take(Rank.MODEL, name)

    async def model_by_id(self, model_id: str) -> None:
        if self.active:
            name = await self.names.of_model(model_id)
            if name is not None:
                await self.model(name)

    async def model_of_deployment(self, deployment_id: str) -> None:
        if self.active:
            name = await self.names.of_deployment(deployment_id)
            if name is not None:
                await self.model(name)

    def note(self, rank: Rank, what: str) -> None:
        """A row lock the statement about to run may wait for (a unique key another
        transaction is inserting): it takes its place in the order like an advisory lock."""
        if self.active and (rank, what) not in self._held:
            if self._top is not None and rank <= self._top:
                raise AssertionError(f"lock order: {rank.name} {what!r} asked for after a {self._top.name} lock")
            self._held.add((rank, what))
            self._top = rank

    async def take(self, rank: Rank, what: str, shared: bool = False) -> None:
        held = (rank, f"{what} (shared)" if shared else what)
        if not self.active or held in self._held or (shared and (rank, what) in self._held):
            return
        key = lock_key(f"{rank.name.lower()}:{what}")
        if self._top is not None and rank == self._top:
            # A second lock of a rank already held: only tried (waiting could deadlock).
            if not await self._backend.lock(self._executor, key, shared=shared, wait=False):
                raise Aborted(
                    "WRITE_CONFLICT",
                    f"another write holds {rank.name.lower()} {what!r}, which this one needed as well: "
                    "nothing was written; retry",
                )
        else:
            self._check_order(rank, what)
            await self._backend.lock(self._executor, key, shared=shared)
        self._held.add(held)
        self._top = rank if self._top is None else max(self._top, rank)

    def _check_order(self, rank: Rank, what: str) -> None:
        if self._top is not None and rank < self._top:
            raise AssertionError(
                f"lock order: {rank.name} {what!r} asked for after a {self._top.name} lock "
                "(controller/store/locks.py: request, model, package, API keys, secrets, lease)"
            )
