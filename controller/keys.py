"""User API keys on the controller: which methods need which scope, the rules for
creating and revoking keys, the admin key of a first start, and last-use times
(kept in memory and written at most once per `last_used_flush_seconds`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import time
from dataclasses import dataclass, field, replace

from controller.domain import NAME_PATTERN
from controller.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from controller.store import ApiKeyRow, Page, Store
from controller.validation import validate_reference
from slipway import keys
from slipway.auth import FailureLimits, current_caller
from slipway.internal_auth import write_private
from slipway.keys import KeyRecord, Scope
from slipway.v1 import (
    async_service_pb2,
    deployment_service_pb2,
    environment_service_pb2,
    key_service_pb2,
    log_service_pb2,
    metric_service_pb2,
    model_service_pb2,
    rollout_service_pb2,
    route_service_pb2,
)

log = logging.getLogger("slipway.keys")

ADMIN_KEY_FILE = "admin.key"
_DEPLOYMENTS = deployment_service_pb2.DESCRIPTOR.services_by_name["DeploymentService"].full_name
# Full service or method name → the scope a call needs; anything not listed needs admin.
METHOD_SCOPES: dict[str, Scope] = {
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name: Scope.DEPLOY,
    environment_service_pb2.DESCRIPTOR.services_by_name["EnvironmentService"].full_name: Scope.DEPLOY,
    _DEPLOYMENTS: Scope.DEPLOY,
    f"{_DEPLOYMENTS}/WakeDeployment": Scope.INFERENCE,
    key_service_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name: Scope.ADMIN,
    # A model's logs: read like its deployments.
    log_service_pb2.DESCRIPTOR.services_by_name["LogService"].full_name: Scope.DEPLOY,
    # A deployment's figures: read by those who manage it (the dashboard's charts).
    metric_service_pb2.DESCRIPTOR.services_by_name["MetricService"].full_name: Scope.DEPLOY,
    # The secret that signs a model's webhooks: managed by those who manage the model.
    async_service_pb2.DESCRIPTOR.services_by_name["WebhookSecretService"].full_name: Scope.DEPLOY,
    # Rolling promotions and rollbacks: managed like promotions.
    rollout_service_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name: Scope.DEPLOY,
}
# Not user surfaces: gateways' credentials guard it (not user keys).
INTERNAL_SERVICES = frozenset(
    {
        route_service_pb2.DESCRIPTOR.services_by_name["RouteService"].full_name,
        async_service_pb2.DESCRIPTOR.services_by_name["AsyncQueueService"].full_name,
    }
)


@dataclass
class KeySettings:
    # False (--insecure-no-auth): every call is accepted without a key.
    require_api_keys: bool = True
    max_live_keys: int = 1000
    max_models_per_key: int = 100
    max_ttl_seconds: float = 10 * 365 * 86400.0
    # Last-use times are written this often at most (one transaction for all keys).
    last_used_flush_seconds: float = 60.0
    failures: FailureLimits = field(default_factory=FailureLimits)


def record_of(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(
        row.id, row.key_sha256, Scope(row.scope), frozenset(row.model_ids), row.expire_time, row.revoke_time is not None
    )


def require_model_access(model_id: str) -> None:
    """The current caller's key may call `model_id` (an inference key limited to others may not)."""
    caller = current_caller.get()
    if caller is not None and not caller.key.allows_model(model_id):
        raise PermissionDenied(
            keys.SCOPE, f"API key {keys.display_prefix(caller.key.id)}… may not call model {model_id}"
        )


class KeyManager:
    def __init__(self, store: Store, settings: KeySettings) -> None:
        self.store = store
        self.settings = settings
        self.records: dict[str, KeyRecord] = {}
        self._used: dict[str, float] = {}
        self._flusher: asyncio.Task | None = None

    async def start(self, data_dir: pathlib.Path) -> None:
        self.records = {row.id: record_of(row) for row in await self.store.all_api_keys()}
        if self.settings.require_api_keys:
            await self._ensure_admin_key(data_dir / ADMIN_KEY_FILE)
        self._flusher = asyncio.create_task(self._flush_periodically())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush_used()

    async def _ensure_admin_key(self, path: pathlib.Path) -> None:
        """A first start (no keys at all) creates an admin key, readable only by this user."""
        if self.records:
            if not path.exists():
                log.warning("no %s, and keys exist: clients need a key of their own", path)
            return
        row, secret = await self.create("admin", Scope.ADMIN, (), None)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, secret + "\n")
        log.info("created an admin API key", extra={"fields": {"key_id": row.id, "file": str(path)}})

    async def create(
        self, name: str, scope: Scope, model_refs: tuple[str, ...], ttl_seconds: float | None
    ) -> tuple[ApiKeyRow, str]:
        if name and not NAME_PATTERN.fullmatch(name):
            raise InvalidArgument("INVALID_KEY_NAME", "a key name is 1-63 characters of [0-9A-Za-z_.-]")
        if model_refs and scope is not Scope.INFERENCE:
            raise InvalidArgument("KEY_MODELS_NEED_INFERENCE_SCOPE", "only inference keys can be limited to models")
        if len(model_refs) > self.settings.max_models_per_key:
            raise InvalidArgument(
                "TOO_MANY_KEY_MODELS", f"a key names at most {self.settings.max_models_per_key} models"
            )
        if ttl_seconds is not None and not 0 < ttl_seconds <= self.settings.max_ttl_seconds:
            raise InvalidArgument(
                "INVALID_KEY_TTL", f"ttl must be positive and at most {self.settings.max_ttl_seconds:.0f} s"
            )
        model_ids = []
        for ref in model_refs:
            validate_reference("model_ids", ref)
            model = await self.store.get_model(ref)
            if model is None or model.delete_time is not None:
                raise NotFound("MODEL_NOT_FOUND", f"no model {ref!r}", model_id=ref)
            model_ids.append(model.id)
        created = time.time()
        async with self.store.write() as tx:
            if await tx.count_live_api_keys() >= self.settings.max_live_keys:
                raise ResourceExhausted(
                    "TOO_MANY_KEYS", f"at most {self.settings.max_live_keys} keys may be live: revoke some first"
                )
            key_id, secret = keys.new_key()
            while await tx.get_api_key(key_id) is not None:
                key_id, secret = keys.new_key()
            row = ApiKeyRow(
                key_id,
                name,
                scope.value,
                tuple(dict.fromkeys(model_ids)),
                keys.key_sha256(secret),
                created,
                None,
                None if ttl_seconds is None else created + ttl_seconds,
                None,
            )
            await tx.insert_api_key(row)
        self.records[key_id] = record_of(row)
        return row, secret

    async def list(self, show_revoked: bool, page_size: int, page_token: str) -> Page:
        page = await self.store.list_api_keys(show_revoked, page_size, page_token)
        return Page([self._with_pending_use(row) for row in page.items], page.next_page_token)

    async def revoke(self, key_id: str) -> ApiKeyRow:
        validate_reference("key_id", key_id)
        async with self.store.write() as tx:
            if await tx.get_api_key(key_id) is None:
                raise NotFound("KEY_NOT_FOUND", f"no API key {key_id!r}", key_id=key_id)
            await tx.revoke_api_key(key_id, time.time())
            row = await tx.get_api_key(key_id)
        assert row is not None
        self.records[key_id] = record_of(row)
        return self._with_pending_use(row)

    def note_used(self, key_id: str) -> None:
        if key_id in self.records:
            self._used[key_id] = time.time()

    def _with_pending_use(self, row: ApiKeyRow) -> ApiKeyRow:
        used = self._used.get(row.id)
        if used is None or (row.last_used_time or 0) >= used:
            return row
        return replace(row, last_used_time=used)

    async def flush_used(self) -> None:
        used, self._used = self._used, {}
        if used:
            await self.store.record_api_key_uses(used)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.last_used_flush_seconds)
            try:
                await self.flush_used()
            except Exception:
                log.exception("could not record when API keys were last used")
