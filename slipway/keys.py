"""User API keys: their format, their hash, the scopes, and checking a presented key
against the known records (pure: no I/O; the controller and every gateway use it).

A key is `sk_<id>_<secret>`: `id` is 8 lowercase base32 characters, public (listings
show `sk_<id>_`), `secret` 32 random bytes in URL-safe base64 (256 bits). Only the
SHA-256 of the whole key is stored. With that much randomness a plain hash cannot be
searched back to the key, so a keyed hash or a slow KDF would add nothing but a secret
or a cost every gateway must share; the hash is compared in constant time anyway.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from slipway.v1 import key_service_pb2 as ks

KEY_PREFIX = "sk"
_KEY = re.compile(r"^sk_([a-z2-7]{8})_([A-Za-z0-9_-]{43})$")
# Longer than any key this platform issues: refused without being looked at.
MAX_CREDENTIAL_CHARS = 256
AUTH_SCHEMES = ("api-key", "bearer")


class Scope(enum.Enum):
    ADMIN = "admin"
    DEPLOY = "deploy"
    INFERENCE = "inference"
    METRICS = "metrics"


# What each scope allows: admin everything, deploy management and inference.
GRANTS: dict[Scope, frozenset[Scope]] = {
    Scope.ADMIN: frozenset(Scope),
    Scope.DEPLOY: frozenset({Scope.DEPLOY, Scope.INFERENCE}),
    Scope.INFERENCE: frozenset({Scope.INFERENCE}),
    Scope.METRICS: frozenset({Scope.METRICS}),
}

SCOPE_TO_PROTO: dict[Scope, ks.KeyScope] = {
    Scope.ADMIN: ks.KEY_SCOPE_ADMIN,
    Scope.DEPLOY: ks.KEY_SCOPE_DEPLOY,
    Scope.INFERENCE: ks.KEY_SCOPE_INFERENCE,
    Scope.METRICS: ks.KEY_SCOPE_METRICS,
}
SCOPE_FROM_PROTO: dict[int, Scope] = {proto: scope for scope, proto in SCOPE_TO_PROTO.items()}

MISSING = "API_KEY_MISSING"
INVALID = "API_KEY_INVALID"
REVOKED = "API_KEY_REVOKED"
EXPIRED = "API_KEY_EXPIRED"
SCOPE = "API_KEY_SCOPE"


class AuthError(Exception):
    """A refused credential. `denied`: a valid key outside its scope (403), else 401.
    Messages never hold the key: at most its public ID."""

    def __init__(self, reason: str, message: str, key_id: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.key_id = key_id

    @property
    def denied(self) -> bool:
        return self.reason == SCOPE


@dataclass(frozen=True)
class KeyRecord:
    """What checking a key needs (the controller's row, or a gateway's route entry)."""

    id: str
    key_sha256: bytes
    scope: Scope
    model_ids: frozenset[str] = frozenset()
    expire_time: float | None = None
    revoked: bool = False

    def allows(self, scope: Scope) -> bool:
        return scope in GRANTS[self.scope]

    def allows_model(self, model_id: str) -> bool:
        return self.scope is not Scope.INFERENCE or not self.model_ids or model_id in self.model_ids


def new_key() -> tuple[str, str]:
    """(public ID, the whole key)."""
    key_id = base64.b32encode(secrets.token_bytes(5)).decode().lower()
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def display_prefix(key_id: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_"


def key_sha256(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def credential(header: str | None) -> str:
    """The key in an `authorization` value (`Api-Key <key>` or `Bearer <key>`)."""
    if not header:
        raise AuthError(MISSING, "an API key is required: send 'Authorization: Api-Key <key>'")
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() not in AUTH_SCHEMES or not key.strip():
        raise AuthError(INVALID, "the authorization header must be 'Api-Key <key>' or 'Bearer <key>'")
    return key.strip()


def key_id_of(key: str) -> str:
    """The public ID of a well-formed key; AuthError for anything else."""
    match = _KEY.match(key) if len(key) <= MAX_CREDENTIAL_CHARS else None
    if match is None:
        raise AuthError(INVALID, "the API key is malformed (keys look like sk_<id>_<secret>)")
    return match[1]


def verify(header: str | None, records: Mapping[str, KeyRecord], now: float) -> KeyRecord:
    """The record of the key in `header`, if it is known, unrevoked and unexpired."""
    key = credential(header)
    key_id = key_id_of(key)
    record = records.get(key_id)
    # Compared even when the ID is unknown, so that both take the same time.
    expected = record.key_sha256 if record is not None else bytes(32)
    if not hmac.compare_digest(key_sha256(key), expected) or record is None:
        raise AuthError(INVALID, f"API key {display_prefix(key_id)}… is not valid", key_id)
    if record.revoked:
        raise AuthError(REVOKED, f"API key {display_prefix(key_id)}… was revoked", key_id)
    if record.expire_time is not None and now >= record.expire_time:
        raise AuthError(EXPIRED, f"API key {display_prefix(key_id)}… has expired", key_id)
    return record


def require(record: KeyRecord, scope: Scope, what: str) -> None:
    if not record.allows(scope):
        raise AuthError(
            SCOPE, f"API key {display_prefix(record.id)}… has scope {record.scope.value}; {what} needs {scope.value}"
        )


def require_model(record: KeyRecord, model_id: str) -> None:
    if not record.allows_model(model_id):
        raise AuthError(SCOPE, f"API key {display_prefix(record.id)}… may not call model {model_id}", record.id)
