"""What the store hands back and takes: rows, pages, change notices, and opaque IDs."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from controller.domain import Deployment, Model
from controller.environments import Environment
from controller.errors import InvalidArgument


def new_id(prefix: str) -> str:
    """Opaque ID: a prefix and 60 random bits in lowercase base32."""
    return prefix + base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]


def now() -> float:
    return time.time()


def encode_page_token(after_pk: int, query: str) -> str:
    """A page token names the listing it continues (`query`: collection and filters)."""
    return base64.urlsafe_b64encode(json.dumps({"after": after_pk, "query": query}).encode()).decode()


def decode_page_token(token: str, query: str) -> int:
    if not token:
        return 0
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = decoded["after"]
        if isinstance(after, int) and after >= 0 and decoded["query"] == query:
            return after
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument("INVALID_PAGE_TOKEN", f"page_token {token!r} is not one this server issued") from None
    raise InvalidArgument(
        "INVALID_PAGE_TOKEN", f"page_token {token!r} continues another listing (the filters must stay the same)"
    )


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_page_token: str


@dataclass(frozen=True)
class Change:
    """What one committed transaction touched; or, with `reset`, that changes may have been
    missed (other controllers' announcements while the store was not listening): every
    listener reads again all it follows."""

    deployments: set[str]
    models: set[str]
    api_keys: set[str] = field(default_factory=set)
    reset: bool = False


@dataclass(frozen=True)
class RouteSnapshot:
    models: list[Model]
    deployments: list[Deployment]
    deleted_model_ids: list[str]
    deleted_deployment_ids: list[str]
    environments: list[Environment] = field(default_factory=list)


@dataclass(frozen=True)
class ApiKeyRow:
    id: str
    name: str
    scope: str
    model_ids: tuple[str, ...]
    key_sha256: bytes
    create_time: float
    last_used_time: float | None
    expire_time: float | None
    revoke_time: float | None


@dataclass(frozen=True)
class ReplicaRow:
    id: str
    deployment_id: str
    revision: int
    pid: int | None
    port: int | None
    start_time: float
    ready_time: float | None
    stop_time: float | None


@dataclass(frozen=True)
class UsageRow:
    model_id: str
    deployment_id: str
    deployment_name: str
    replica_seconds: float
    replica_starts: int
    deployment_deleted: bool
    # The environment the deployment is in now ("" for none).
    environment: str = ""


@dataclass(frozen=True)
class SecretRow:
    name: str
    ciphertext: bytes
    create_time: float
    update_time: float


@dataclass(frozen=True)
class EventRow:
    seq: int
    create_time: float
    model_id: str
    deployment_id: str
    type: str
    message: str
    environment: str = ""
