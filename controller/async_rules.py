"""Async inference: the rules, as pure functions (no I/O), and the operator's settings.

Design (README "Async inference" says the same for users):

- **Where the queue lives.** In the platform's store: table `async_requests` (migration 9,
  controller/store/async_requests.py), SQLite by default, PostgreSQL where configured. A
  gateway answers `202 {"request_id"}` only once the controller's INSERT has committed,
  so an accepted request survives any process crash (SIGKILL) of the gateway, the
  controller or a replica, and a restart.
- **Who dispatches.** The leader controller only (controller/async_dispatch.py), every
  change fenced by its lease token like other leader work (controller/leader.py). It sends
  a deployment at most `predict_concurrency` requests per ready replica at once (the
  replica's own slots), lowest priority number first (0, then 1, then 2), oldest first
  within a priority. Queued and running requests count as load for the autoscaler (as a
  gateway's in-flight and queued requests do), so a queue wakes a scaled-to-zero
  deployment and scales it up to `max_replica`.
- **Delivery guarantee: at-least-once execution, exactly one recorded outcome.** A request
  is marked IN_PROGRESS (attempt number + 1, the leader's fencing token) in a committed
  transaction before it is sent to a replica; its result is recorded only if it is still
  that attempt under that token. If the run is interrupted (the replica dies, or the
  controller is killed or deposed while it runs), the next leader queues it again and it
  runs again: the model may see a request more than once, with the attempt number in
  the `x-slipway-async-attempt` request header (`request.headers` for a model that takes
  the request). A request ends in exactly one terminal state, recorded once; after
  `max_attempts` interrupted runs it is FAILED (`ASYNC_ATTEMPTS_EXHAUSTED`). A model
  error is not retried: FAILED with the model's error.
- **Queue time.** `max_time_in_queue_seconds` (10-259200, default 600) counts from
  acceptance; a request never started by then is EXPIRED. One put back after an
  interrupted run has left the queue once and does not expire.
- **Bounds** (operator settings below): payload size, queued requests per deployment,
  stored result size (a larger answer is FAILED `ASYNC_RESULT_TOO_LARGE`), and retention
  of finished requests (then deleted, once their webhook is no longer pending).
- **Webhooks** (controller/webhooks.py): when a request ends, its result is POSTed to its
  `webhook_endpoint`, signed with the model's webhook secret (HMAC-SHA256 over
  `timestamp + "." + body`), retried with exponential backoff and jitter for at most
  `webhook_delivery_seconds`; at-least-once (a receiver may see a delivery twice: it
  names the request). Only https unless `webhook_allow_http`; no redirects followed; the
  host is resolved and every address checked: loopback, private, link-local, multicast and
  reserved addresses are refused unless `webhook_allow_private_addresses`, and the
  connection goes to the checked address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import urllib.parse
from dataclasses import dataclass

from controller.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

PRIORITIES = (0, 1, 2)
MAX_WEBHOOK_URL_CHARS = 2048
SIGNATURE_HEADER = "X-Slipway-Signature"
TIMESTAMP_HEADER = "X-Slipway-Webhook-Timestamp"
ATTEMPT_HEADER = "X-Slipway-Webhook-Attempt"
# The request header (gRPC metadata) that tells the model which attempt it runs.
ATTEMPT_METADATA_KEY = "x-slipway-async-attempt"


@dataclass(frozen=True)
class AsyncSettings:
    """Operator configuration of async inference (ControllerSettings.async_requests)."""

    # Largest model input of one request (the gateway's body limit applies first).
    max_payload_bytes: int = 4 * 1024 * 1024
    # Most QUEUED requests one deployment may have; one more is refused ASYNC_QUEUE_FULL.
    max_queued_per_deployment: int = 10_000
    # Largest model answer stored; a larger one ends the request FAILED ASYNC_RESULT_TOO_LARGE.
    max_result_bytes: int = 4 * 1024 * 1024
    # How long a finished request (and its result) is kept.
    result_retention_seconds: float = 7 * 24 * 3600.0
    # The range and default of a request's max_time_in_queue_seconds.
    min_queue_seconds: int = 10
    max_queue_seconds: int = 259_200
    default_queue_seconds: int = 600
    # Runs of one request before it is FAILED when each was interrupted.
    max_attempts: int = 3
    # Longest one run may take on the replica.
    run_timeout_seconds: float = 600.0
    # How often the leader looks at the queue when nothing pokes it.
    dispatch_interval_seconds: float = 0.2
    # Webhooks: each attempt's timeout, the whole delivery's time, the backoff between attempts.
    webhook_timeout_seconds: float = 10.0
    webhook_delivery_seconds: float = 3600.0
    webhook_backoff_seconds: float = 1.0
    webhook_backoff_max_seconds: float = 60.0
    # Deliveries in flight at once (over all requests).
    webhook_concurrency: int = 16
    # Off by default: webhooks cannot reach internal services (loopback, private ranges).
    webhook_allow_private_addresses: bool = False
    # Off by default: plain http:// endpoints (results would travel unencrypted).
    webhook_allow_http: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.min_queue_seconds <= self.default_queue_seconds <= self.max_queue_seconds:
            raise ValueError("async queue seconds: need 0 < min <= default <= max")
        if self.max_attempts < 1:
            raise ValueError("async max_attempts must be at least 1")


def check_priority(priority: int) -> int:
    if priority not in PRIORITIES:
        raise InvalidArgument("INVALID_PRIORITY", f"priority must be 0, 1 or 2 (lower runs first), not {priority}")
    return priority


def queue_seconds(requested: int, settings: AsyncSettings) -> int:
    """The request's max_time_in_queue_seconds (0: the default)."""
    if requested == 0:
        return settings.default_queue_seconds
    if not settings.min_queue_seconds <= requested <= settings.max_queue_seconds:
        raise InvalidArgument(
            "INVALID_MAX_TIME_IN_QUEUE",
            f"max_time_in_queue_seconds must be {settings.min_queue_seconds}-{settings.max_queue_seconds}, "
            f"not {requested}",
        )
    return requested


def check_payload(size: int, settings: AsyncSettings) -> None:
    if size > settings.max_payload_bytes:
        raise ResourceExhausted(
            "ASYNC_PAYLOAD_TOO_LARGE",
            f"the model input is {size} bytes; an async request may carry at most {settings.max_payload_bytes}",
            limit=str(settings.max_payload_bytes),
        )


MAX_CONTENT_TYPE_CHARS = 255


def check_content_type(content_type: str) -> None:
    if len(content_type) > MAX_CONTENT_TYPE_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in content_type):
        raise InvalidArgument(
            "INVALID_CONTENT_TYPE",
            f"content_type must be at most {MAX_CONTENT_TYPE_CHARS} characters without control characters",
        )


def check_queue_length(queued: int, deployment_id: str, settings: AsyncSettings) -> None:
    if queued >= settings.max_queued_per_deployment:
        raise ResourceExhausted(
            "ASYNC_QUEUE_FULL",
            f"deployment {deployment_id} has {queued} queued async requests, the most it may have: retry later",
            deployment_id=deployment_id,
            limit=str(settings.max_queued_per_deployment),
        )


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    scheme: str
    host: str
    port: int


def check_webhook_url(url: str, allow_http: bool) -> WebhookTarget:
    """The endpoint's parts, or INVALID_ARGUMENT INVALID_WEBHOOK_ENDPOINT saying why."""

    def refuse(why: str) -> InvalidArgument:
        return InvalidArgument("INVALID_WEBHOOK_ENDPOINT", f"webhook_endpoint {url[:200]!r} {why}")

    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise refuse(f"is longer than {MAX_WEBHOOK_URL_CHARS} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise refuse("contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise refuse(f"is not a URL ({exc})") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise refuse("must be an https:// URL" if not allow_http else "must be an http:// or https:// URL")
    if not parts.hostname:
        raise refuse("names no host")
    if parts.username is not None or parts.password is not None:
        raise refuse("may not carry credentials")
    return WebhookTarget(url, parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def address_allowed(address: str, allow_private: bool) -> bool:
    """Whether a webhook may connect to this IP address: public unicast only, unless the
    operator allows private destinations (loopback, private ranges, link-local)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified:
        return False
    if allow_private:
        return True
    return ip.is_global and not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: `v1=` and the hex HMAC-SHA256 of `"<timestamp>." + body`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (and the tests): constant-time comparison."""
    try:
        expected = sign(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, signature)


def backoff_seconds(attempt: int, settings: AsyncSettings, rng: random.Random | None = None) -> float:
    """Wait before webhook attempt `attempt + 1` (after `attempt` failures): exponential,
    capped, with full jitter in its upper half."""
    ceiling = min(settings.webhook_backoff_max_seconds, settings.webhook_backoff_seconds * 2 ** max(attempt - 1, 0))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def require_webhook_secret(has_secret: bool, model_id: str) -> None:
    if not has_secret:
        raise FailedPrecondition(
            "WEBHOOK_SECRET_MISSING",
            f"model {model_id} has no webhook secret to sign deliveries with: create one "
            f"(slipway requests webhook-secret --model {model_id}) before sending a webhook_endpoint",
            model_id=model_id,
        )


def run_slots(ready_replicas: int, predict_concurrency: int) -> int:
    """Requests the queue may have running on a deployment at once."""
    return ready_replicas * max(predict_concurrency, 1)
