"""Async requests as any controller serves them (leader or not): accept into the queue,
read, cancel, list, and the models' webhook secrets. Running them is the leader's
(controller/async_dispatch.py); the rules are in controller/async_rules.py, whose
docstring is the design."""

from __future__ import annotations

import secrets as token_source
import time
from collections.abc import Callable

from controller import async_rules as rules
from controller.errors import FailedPrecondition, InvalidArgument, NotFound
from controller.lookups import require_deployment, require_model
from controller.secrets import SecretBox
from controller.store import Store
from controller.store.async_requests import NO_WEBHOOK, QUEUED, WEBHOOK_PENDING, AsyncRequestRow
from controller.store.rows import Page
from slipway import request_ids

MAX_PAGE_SIZE = 1000
ROUTES = ("production", "development", "deployment", "environment")


def new_async_request_id() -> str:
    """`areq-` and 96 random bits in hex: also a valid request ID for the model's log lines."""
    return "areq-" + token_source.token_hex(12)


def _secret_name(model_id: str) -> str:
    return f"webhook:{model_id}"


class AsyncQueue:
    def __init__(
        self, store: Store, settings: rules.AsyncSettings, box: SecretBox, on_enqueue: Callable[[], None]
    ) -> None:
        self.store = store
        self.settings = settings
        self.box = box
        self._on_enqueue = on_enqueue

    async def enqueue(
        self,
        model_id: str,
        deployment_id: str,
        route: str,
        payload: bytes,
        content_type: str,
        webhook_endpoint: str,
        priority: int,
        max_time_in_queue_seconds: int,
    ) -> AsyncRequestRow:
        """Committed before this returns: the request is durably queued."""
        settings = self.settings
        if route not in ROUTES:
            raise InvalidArgument("INVALID_ASYNC_ROUTE", f"route must be one of {', '.join(ROUTES)}")
        rules.check_priority(priority)
        seconds = rules.queue_seconds(max_time_in_queue_seconds, settings)
        rules.check_payload(len(payload), settings)
        rules.check_content_type(content_type)
        if webhook_endpoint:
            rules.check_webhook_url(webhook_endpoint, settings.webhook_allow_http)
        now = time.time()
        async with self.store.write() as tx:
            deployment = await require_deployment(tx, deployment_id)
            if model_id and deployment.model_id != model_id:
                raise NotFound(
                    "DEPLOYMENT_NOT_IN_MODEL", f"deployment {deployment_id} does not belong to model {model_id}"
                )
            if deployment.deleted:
                raise NotFound("DEPLOYMENT_DELETED", f"deployment {deployment_id} was deleted")
            if not deployment.active:
                raise NotFound("DEPLOYMENT_INACTIVE", f"deployment {deployment_id} is deactivated")
            if webhook_endpoint:
                secret = await tx.async_requests.get_webhook_secret(deployment.model_id)
                rules.require_webhook_secret(secret is not None, deployment.model_id)
            rules.check_queue_length(await tx.async_requests.count_queued(deployment.id), deployment.id, settings)
            row = AsyncRequestRow(
                pk=0,
                id=new_async_request_id(),
                model_id=deployment.model_id,
                deployment_id=deployment.id,
                route=route,
                priority=priority,
                status=QUEUED,
                payload=payload,
                content_type=content_type,
                create_time=now,
                queue_deadline=now + seconds,
                webhook_endpoint=webhook_endpoint,
                webhook_status=WEBHOOK_PENDING if webhook_endpoint else NO_WEBHOOK,
            )
            await tx.async_requests.insert(row)
        self._on_enqueue()
        return row

    async def get(self, request_id: str) -> AsyncRequestRow:
        if not request_ids.is_valid(request_id):
            raise InvalidArgument("INVALID_REQUEST_ID", "request_id must be 1-128 characters of [A-Za-z0-9._:-]")
        row = await self.store.async_requests.get(request_id)
        if row is None:
            raise NotFound(
                "ASYNC_REQUEST_NOT_FOUND",
                f"no async request {request_id} (finished ones are kept {self.settings.result_retention_seconds:g} s)",
            )
        return row

    async def cancel(self, request_id: str) -> AsyncRequestRow:
        await self.get(request_id)  # NOT_FOUND first
        async with self.store.write() as tx:
            cancelled = await tx.async_requests.cancel(request_id, time.time(), self.settings.webhook_delivery_seconds)
        fresh = await self.get(request_id)
        if not cancelled:
            raise FailedPrecondition(
                "ASYNC_REQUEST_NOT_QUEUED",
                f"async request {request_id} is {fresh.status}: only a QUEUED request can be canceled",
                request_id=request_id,
                status=fresh.status,
            )
        return fresh

    async def list(self, model_ref: str, status: str, page_size: int, page_token: str) -> Page:
        model = await require_model(self.store, model_ref)
        size = page_size or 100
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument("INVALID_PAGE_SIZE", f"page_size must be 1-{MAX_PAGE_SIZE}")
        return await self.store.async_requests.list_by_model(model.id, status, size, page_token)

    async def model_of(self, request_id: str) -> str:
        return (await self.get(request_id)).model_id

    # --- webhook secrets ------------------------------------------------------------

    async def rotate_secret(self, model_ref: str) -> tuple[str, str]:
        """(model ID, the new secret): shown to the caller once, stored sealed."""
        model = await require_model(self.store, model_ref)
        secret = "whsec_" + token_source.token_urlsafe(32)
        sealed = self.box.seal(_secret_name(model.id), secret.encode())
        async with self.store.write() as tx:
            await tx.async_requests.put_webhook_secret(model.id, sealed, time.time())
        return model.id, secret

    async def delete_secret(self, model_ref: str) -> None:
        model = await require_model(self.store, model_ref)
        async with self.store.write() as tx:
            if not await tx.async_requests.delete_webhook_secret(model.id):
                raise NotFound("WEBHOOK_SECRET_NOT_FOUND", f"model {model.id} has no webhook secret")

    async def webhook_secret(self, model_id: str) -> str | None:
        sealed = await self.store.async_requests.get_webhook_secret(model_id)
        return None if sealed is None else self.box.open(_secret_name(model_id), sealed).decode()
