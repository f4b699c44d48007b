"""Async inference's pure rules (controller/async_rules.py) and webhook delivery's checks
against a real loopback receiver (controller/webhooks.py)."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiohttp import web

from controller import async_rules as rules
from controller.errors import InvalidArgument, ResourceExhausted
from controller.store.async_requests import SUCCEEDED, WEBHOOK_PENDING, AsyncRequestRow
from controller.webhooks import post_once


@pytest.mark.parametrize(
    ("address", "public_only", "private_allowed"),
    [
        ("8.8.8.8", True, True),
        ("2606:4700:4700::1111", True, True),
        ("127.0.0.1", False, True),
        ("::1", False, True),
        ("10.1.2.3", False, True),
        ("172.16.0.1", False, True),
        ("192.168.1.1", False, True),
        ("169.254.169.254", False, True),  # cloud metadata
        ("fe80::1%eth0", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("100.64.0.1", False, True),  # carrier-grade NAT: not global
        ("0.0.0.0", False, False),
        ("224.0.0.1", False, False),
    ],
)
def test_webhook_addresses(address, public_only, private_allowed):
    assert rules.address_allowed(address, allow_private=False) is public_only
    assert rules.address_allowed(address, allow_private=True) is private_allowed


@pytest.mark.parametrize(
    ("url", "allow_http", "why"),
    [
        ("http://example.com/h", False, "https"),
        ("ftp://example.com/h", True, "http:// or https://"),
        ("https:///nohost", False, "no host"),
        ("https://user:pw@example.com/h", False, "credentials"),
        ("https://example.com/a b", False, "spaces"),
        ("https://example.com:99999/h", False, "not a URL"),
        ("https://example.com/" + "a" * 3000, False, "longer than"),
    ],
)
def test_webhook_urls_refused_with_the_reason(url, allow_http, why):
    with pytest.raises(InvalidArgument) as refused:
        rules.check_webhook_url(url, allow_http)
    assert refused.value.reason == "INVALID_WEBHOOK_ENDPOINT" and why in refused.value.message


def test_webhook_url_parts_and_settings_bounds():
    target = rules.check_webhook_url("https://hooks.example.com/x?y=1", False)
    assert (target.host, target.port, target.scheme) == ("hooks.example.com", 443, "https")
    assert rules.check_webhook_url("http://h:8080/", True).port == 8080
    settings = rules.AsyncSettings()
    assert rules.queue_seconds(0, settings) == 600
    for bad in (9, 259_201, -1):
        with pytest.raises(InvalidArgument):
            rules.queue_seconds(bad, settings)
    with pytest.raises(ResourceExhausted):
        rules.check_payload(settings.max_payload_bytes + 1, settings)
    with pytest.raises(ResourceExhausted):
        rules.check_queue_length(settings.max_queued_per_deployment, "d", settings)
    with pytest.raises(InvalidArgument):
        rules.check_priority(3)
    rules.check_content_type("application/json; charset=utf-8")
    for bad in ("x" * 256, "text/plain\r\nX-Injected: 1"):
        with pytest.raises(InvalidArgument):
            rules.check_content_type(bad)
    with pytest.raises(ValueError):
        rules.AsyncSettings(min_queue_seconds=700)


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    settings = rules.AsyncSettings(webhook_backoff_seconds=1.0, webhook_backoff_max_seconds=8.0)
    rng = random.Random(1)
    waits = [[rules.backoff_seconds(n, settings, rng) for _ in range(50)] for n in range(1, 7)]
    for n, samples in enumerate(waits, start=1):
        ceiling = min(8.0, 2 ** (n - 1))
        assert all(ceiling / 2 <= w <= ceiling for w in samples)
        assert len(set(samples)) > 1, "no jitter"


def test_signature_is_hmac_over_timestamp_and_body():
    signature = rules.sign("whsec_k", 1700000000, b'{"a":1}')
    assert signature == "v1=" + __import__("hmac").new(b"whsec_k", b'1700000000.{"a":1}', "sha256").hexdigest()
    assert rules.verify("whsec_k", "1700000000", b'{"a":1}', signature)
    assert not rules.verify("whsec_k", "1700000001", b'{"a":1}', signature)
    assert not rules.verify("whsec_k", "1700000000", b'{"a":2}', signature)
    assert not rules.verify("whsec_k", "soon", b'{"a":1}', signature)


def _row(url: str) -> AsyncRequestRow:
    return AsyncRequestRow(
        1, "areq-1", "m", "d", "development", 0, SUCCEEDED, None, "application/json", 0.0, 0.0,
        webhook_endpoint=url, webhook_status=WEBHOOK_PENDING,
    )  # fmt: skip


async def test_delivery_refuses_loopback_unless_allowed_and_never_follows_a_redirect():
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=302, headers={"Location": "/landed"})

    async def landed(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", redirect)
    app.router.add_post("/landed", landed)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        strict = rules.AsyncSettings(webhook_allow_http=True)
        error = await post_once(_row(f"{url}/landed"), b"{}", "whsec_k", strict)
        assert "127.0.0.1" in error and "private" in error and not hits
        error = await post_once(_row(f"http://localhost:{runner.addresses[0][1]}/landed"), b"{}", "k", strict)
        assert "private" in error and not hits, "a name resolving to loopback is refused too"
        allowed = rules.AsyncSettings(webhook_allow_http=True, webhook_allow_private_addresses=True)
        assert await post_once(_row(f"{url}/landed"), b"{}", "whsec_k", allowed) == ""
        error = await post_once(_row(f"{url}/hook"), b"{}", "whsec_k", allowed)
        assert error == "the receiver answered HTTP 302" and hits == ["/landed", "/hook"]
        https_only = rules.AsyncSettings(webhook_allow_private_addresses=True)
        assert "https" in await post_once(_row(f"{url}/landed"), b"{}", "whsec_k", https_only)
    finally:
        await runner.cleanup()


async def test_a_receiver_that_never_answers_times_out_the_attempt():
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    settings = rules.AsyncSettings(
        webhook_allow_http=True, webhook_allow_private_addresses=True, webhook_timeout_seconds=0.3
    )
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        assert await post_once(_row(url), b"{}", "whsec_k", settings) == "no answer within 0.3 s"
    finally:
        release.set()
        await runner.cleanup()
