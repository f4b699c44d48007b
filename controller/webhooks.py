"""Webhook delivery of finished async requests (the leader's; rules in controller/async_rules.py).

A finished request with a `webhook_endpoint` is due at once: its JSON (request_id, model_id,
deployment_id, status, output or error, time, attempts) is POSTed with

    X-Slipway-Webhook-Timestamp: <unix seconds>
    X-Slipway-Signature: v1=<hex HMAC-SHA256(model's webhook secret, "<timestamp>." + body)>
    X-Slipway-Webhook-Attempt: <n>

Any 2xx answer is delivered (WEBHOOK SUCCEEDED). Anything else — another status (a redirect
included: none is followed), a timeout (`webhook_timeout_seconds` per attempt), a refused
connection, a host that resolves to an address not allowed — is retried after an
exponential backoff with jitter, until `webhook_delivery_seconds` after the request ended;
then the webhook is FAILED and the result stays fetchable. Each attempt is recorded
(fenced) after it is made, so a controller killed mid-delivery leaves it due: a receiver
may get a delivery more than once.

The endpoint's host is resolved here and every address checked (loopback, private,
link-local, multicast and reserved ranges are refused unless the operator allows them);
the connection then goes to a checked address (aiohttp asks `_PinnedResolver`, which
answers only those), so the name cannot resolve elsewhere between check and use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from controller import async_rules as rules
from controller.leader import Leadership, LeaseLost
from controller.store import Store
from controller.store.async_requests import WEBHOOK_FAILED, WEBHOOK_PENDING, WEBHOOK_SUCCEEDED, AsyncRequestRow
from slipway.async_json import request_json, webhook_body
from slipway.process import wait_event

log = logging.getLogger("slipway.webhooks")


class WebhookRefused(Exception):
    """This attempt cannot be made (the destination is not allowed)."""


class _PinnedResolver(AbstractResolver):
    def __init__(self, addresses: list[ResolveResult]) -> None:
        self._addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        return [dict(a, hostname=host, port=port) for a in self._addresses]

    async def close(self) -> None:
        pass


async def checked_addresses(target: rules.WebhookTarget, allow_private: bool) -> list[ResolveResult]:
    """Every address the host resolves to, each allowed, or WebhookRefused."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookRefused(f"cannot resolve {target.host}: {exc}") from None
    results: list[ResolveResult] = []
    for family, _type, proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if not rules.address_allowed(address, allow_private):
            raise WebhookRefused(
                f"{target.host} resolves to {address}, a loopback, private, link-local or reserved address "
                "(the operator has not allowed those)"
            )
        results.append(
            ResolveResult(hostname=target.host, host=address, port=target.port, family=family, proto=proto, flags=0)
        )
    if not results:
        raise WebhookRefused(f"{target.host} resolves to no address")
    return results


async def post_once(row: AsyncRequestRow, body: bytes, secret: str, settings: rules.AsyncSettings) -> str:
    """One delivery attempt: "" when the receiver took it, else why not."""
    try:
        target = rules.check_webhook_url(row.webhook_endpoint, settings.webhook_allow_http)
        addresses = await checked_addresses(target, settings.webhook_allow_private_addresses)
    except (WebhookRefused, ValueError) as exc:
        return str(exc)
    except Exception as exc:  # INVALID_ARGUMENT from the URL check
        return str(getattr(exc, "message", exc))
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        rules.TIMESTAMP_HEADER: str(timestamp),
        rules.SIGNATURE_HEADER: rules.sign(secret, timestamp, body),
        rules.ATTEMPT_HEADER: str(row.webhook_attempts + 1),
        "User-Agent": "slipway-webhooks",
    }
    connector = aiohttp.TCPConnector(resolver=_PinnedResolver(addresses), force_close=True)
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds)
            ) as session,
            session.post(target.url, data=body, headers=headers, allow_redirects=False) as response,
        ):
            if 200 <= response.status < 300:
                return ""
            return f"the receiver answered HTTP {response.status}"
    except TimeoutError:
        return f"no answer within {settings.webhook_timeout_seconds:g} s"
    except aiohttp.ClientError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]


class WebhookDeliverer:
    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        settings: rules.AsyncSettings,
        secret_of: Callable[[str], Awaitable[str | None]],
        on_attempt: Callable[[AsyncRequestRow, str, str], None] = lambda row, error, status: None,
    ) -> None:
        self.store = store
        self.leadership = leadership
        self.settings = settings
        self.secret_of = secret_of
        self.on_attempt = on_attempt
        self._poke = asyncio.Event()
        self._sending: dict[str, asyncio.Task] = {}

    def poke(self) -> None:
        self._poke.set()

    async def run(self) -> None:
        try:
            while True:
                self._poke.clear()
                try:
                    await self._pass()
                except Exception:
                    log.exception("webhook pass failed")
                await wait_event(self._poke, self.settings.dispatch_interval_seconds)
        finally:
            tasks = list(self._sending.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._sending.clear()

    async def _pass(self) -> None:
        free = self.settings.webhook_concurrency - len(self._sending)
        if free <= 0 or not self.leadership.held():
            return
        due = await self.store.async_requests.webhooks_due(time.time(), free, exclude=self._sending)
        for row in due:
            task = asyncio.create_task(self._deliver(row))
            self._sending[row.id] = task
            task.add_done_callback(functools.partial(self._done, row.id))

    def _done(self, request_id: str, _task: asyncio.Task) -> None:
        self._sending.pop(request_id, None)
        self._poke.set()

    async def _deliver(self, row: AsyncRequestRow) -> None:
        settings = self.settings
        secret = await self.secret_of(row.model_id)
        if secret is None:
            error = "the model's webhook secret was deleted: nothing to sign the delivery with"
        else:
            error = await post_once(row, webhook_body(request_json(row_fields(row))), secret, settings)
        now = time.time()
        if not error:
            status, next_time = WEBHOOK_SUCCEEDED, None
        else:
            next_time = now + rules.backoff_seconds(row.webhook_attempts + 1, settings)
            deadline = row.webhook_deadline if row.webhook_deadline is not None else now
            status = WEBHOOK_PENDING if next_time <= deadline and secret is not None else WEBHOOK_FAILED
            if status == WEBHOOK_FAILED:
                next_time = None
        with contextlib.suppress(LeaseLost):
            async with self.leadership.fenced_write() as tx:
                await tx.async_requests.webhook_attempted(row, status, next_time, error)
        self.on_attempt(row, error, status)


def row_fields(row: AsyncRequestRow) -> dict[str, Any]:
    """What slipway/async_json.py renders, from a stored row."""
    return {
        "request_id": row.id,
        "model_id": row.model_id,
        "deployment_id": row.deployment_id,
        "status": row.status,
        "webhook_status": row.webhook_status,
        "priority": row.priority,
        "attempts": row.attempts,
        "create_time": row.create_time,
        "start_time": row.start_time,
        "finish_time": row.finish_time,
        "output": row.output,
        "output_content_type": row.output_content_type,
        "error_code": row.error_code,
        "error_reason": row.error_reason,
        "error_message": row.error_message,
        "webhook_endpoint": row.webhook_endpoint,
        "webhook_attempts": row.webhook_attempts,
        "webhook_error": row.webhook_error,
    }


__all__ = ["WebhookDeliverer", "checked_addresses", "post_once", "row_fields", "json"]
