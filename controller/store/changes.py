"""Changes made by other controllers on the same database, heard as the store's own.

Every write transaction that touched deployments, models or API keys announces their IDs
(on PostgreSQL: `NOTIFY slipway_changes`, sent inside the transaction, so delivered exactly
when it commits and never for one that rolled back). Each store listens, drops what it
announced itself (its listeners were already told, in-process) and calls its listeners with
the rest, so watches and route streams on every controller see every controller's writes.
SQLite has one controller per file: nothing is announced there.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from controller.store.rows import Change

CHANNEL = "slipway_changes"
# NOTIFY payloads are limited to 8000 bytes: a change with more IDs goes as several.
IDS_PER_MESSAGE = 100


def new_origin() -> str:
    return uuid.uuid4().hex


def encode(origin: str, change: Change) -> Iterator[str]:
    tagged = (
        [("d", i) for i in sorted(change.deployments)]
        + [("m", i) for i in sorted(change.models)]
        + [("k", i) for i in sorted(change.api_keys)]
    )
    for start in range(0, len(tagged), IDS_PER_MESSAGE):
        chunk = tagged[start : start + IDS_PER_MESSAGE]
        yield json.dumps({"o": origin, **{k: [i for t, i in chunk if t == k] for k in "dmk"}})


def decode(payload: str, own_origin: str) -> Change | None:
    """The change another store announced; None for our own or a payload that is not one."""
    try:
        message = json.loads(payload)
        if message.get("o") == own_origin:
            return None
        return Change(set(message.get("d", [])), set(message.get("m", [])), set(message.get("k", [])))
    except (ValueError, AttributeError, TypeError):
        return None
