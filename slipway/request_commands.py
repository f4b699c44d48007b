"""`slipway requests`: async requests — get, cancel, list, and the model's webhook secret —
and the `--async` half of `slipway predict` (async_predict). Requests are read through the
gateway (InferenceService, with the caller's key); the webhook secret is managed on the
controller (WebhookSecretService, deploy scope)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click

from slipway.async_json import STATUS_NAMES, proto_fields, request_json
from slipway.channels import secure_or_insecure_channel
from slipway.client import CHANNEL_OPTIONS, JSON, client_ca, controller_channel
from slipway.command_support import root_api_key
from slipway.credentials import with_api_key
from slipway.inference_client import call_with_fallback
from slipway.v1 import async_service_pb2 as asv
from slipway.v1 import async_service_pb2_grpc as asv_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "EXPIRED", "CANCELED"})
POLL_SECONDS = 0.5
CALL_TIMEOUT_SECONDS = 30.0


def _gateway() -> inf_grpc.InferenceServiceStub:
    ctx = click.get_current_context()
    root = ctx.find_root().params
    channel = ctx.with_resource(secure_or_insecure_channel(root["gateway"], client_ca(root["tls_ca"]), CHANNEL_OPTIONS))
    return inf_grpc.InferenceServiceStub(with_api_key(channel, root_api_key()))


def _show(request: asv.AsyncRequest) -> None:
    click.echo(json.dumps(request_json(proto_fields(request)), indent=2, ensure_ascii=False))


def _wait(stub: inf_grpc.InferenceServiceStub, request_id: str, timeout: float) -> asv.AsyncRequest:
    deadline = time.monotonic() + timeout
    while True:
        found = stub.GetAsyncRequest(inf.GetAsyncRequestRequest(request_id=request_id), timeout=CALL_TIMEOUT_SECONDS)
        if STATUS_NAMES[found.request.status] in TERMINAL:
            return found.request
        if time.monotonic() >= deadline:
            raise click.ClickException(
                f"async request {request_id} is still {STATUS_NAMES[found.request.status]} after {timeout:g}s"
            )
        time.sleep(POLL_SECONDS)


def async_options(command: Callable) -> Callable:
    """`slipway predict`'s options for async inference."""
    options = [
        click.option("--async", "is_async", is_flag=True, help="Queue the request (async inference); print its ID."),
        click.option("--webhook", default="", help="With --async: POST the result to this https:// URL, signed."),
        click.option("--priority", type=click.IntRange(0, 2), default=0, help="With --async: 0 runs first, then 1, 2."),
        click.option(
            "--max-time-in-queue",
            "queue_seconds",
            type=click.IntRange(min=0),
            default=0,
            help="With --async: seconds it may wait queued before it expires (default 600).",
        ),
        click.option("--wait", is_flag=True, help="With --async: wait for the outcome and print it."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def wanted(queued: dict[str, Any]) -> bool:
    """Whether `slipway predict` was asked for an async request (its options need --async)."""
    if queued["is_async"]:
        return True
    if queued["webhook"] or queued["wait"] or queued["priority"] or queued["queue_seconds"]:
        raise click.UsageError("--webhook, --priority, --max-time-in-queue and --wait go with --async")
    return False


def async_predict(
    target: str,
    payload: str,
    deployment: str,
    environment: str,
    *,
    is_async: bool,
    webhook: str,
    priority: int,
    queue_seconds: int,
    wait: bool,
    timeout: float,
) -> None:
    """What `slipway predict --async` does: queue, print the request ID (and with --wait, the outcome)."""
    stub = _gateway()

    def call(t: inf.Target) -> inf.AsyncPredictResponse:
        return stub.AsyncPredict(
            inf.AsyncPredictRequest(
                target=t,
                payload=payload.encode(),
                content_type=JSON,
                webhook_endpoint=webhook,
                priority=priority,
                max_time_in_queue_seconds=queue_seconds,
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    accepted = call_with_fallback(call, target, deployment, environment)
    if not wait:
        click.echo(accepted.request_id)
        return
    click.echo(f"Queued {accepted.request_id} for deployment {accepted.deployment_id}", err=True)
    done = _wait(stub, accepted.request_id, timeout)
    _show(done)
    if STATUS_NAMES[done.status] != "SUCCEEDED":
        raise SystemExit(1)


@click.group()
def requests() -> None:
    """Async requests (slipway predict --async): their status and results, kept after they finish."""


@requests.command("get")
@click.argument("request_id")
@click.option("--wait", is_flag=True, help="Wait until it has finished.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds --wait waits.")
def requests_get(request_id: str, wait: bool, timeout: float) -> None:
    """Status, result or error, and webhook delivery of REQUEST_ID."""
    stub = _gateway()
    if wait:
        _show(_wait(stub, request_id, timeout))
        return
    _show(stub.GetAsyncRequest(inf.GetAsyncRequestRequest(request_id=request_id), timeout=CALL_TIMEOUT_SECONDS).request)


@requests.command("cancel")
@click.argument("request_id")
def requests_cancel(request_id: str) -> None:
    """Cancel REQUEST_ID while it is still queued."""
    stub = _gateway()
    stub.CancelAsyncRequest(inf.CancelAsyncRequestRequest(request_id=request_id), timeout=CALL_TIMEOUT_SECONDS)
    click.echo(f"Canceled {request_id}.")


@requests.command("list")
@click.option("--model", required=True, help="Model ID or name.")
@click.option(
    "--status",
    type=click.Choice(sorted(name for name in STATUS_NAMES.values() if name != "UNSPECIFIED"), case_sensitive=False),
    help="Only requests in this status.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def requests_list(model: str, status: str | None, limit: int, output: str) -> None:
    """A model's async requests, newest first."""
    stub = _gateway()
    value = asv.AsyncRequestStatus.Value(f"ASYNC_REQUEST_STATUS_{status.upper()}") if status else 0
    page = stub.ListAsyncRequests(
        inf.ListAsyncRequestsRequest(model_id=model, status=value, page_size=limit),  # type: ignore[arg-type]
        timeout=CALL_TIMEOUT_SECONDS,
    )
    rows: list[dict[str, Any]] = [request_json(proto_fields(item)) for item in page.requests]
    if output == "json":
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("No async requests.")
        return
    columns = ("request_id", "status", "webhook_status", "priority", "attempts", "created_at", "deployment_id")
    widths = [max(len(c), *(len(str(row[c])) for row in rows)) for c in columns]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


@requests.command("webhook-secret")
@click.option("--model", required=True, help="Model ID or name.")
@click.option("--delete", "delete", is_flag=True, help="Delete it (requests with a webhook are then refused).")
def requests_webhook_secret(model: str, delete: bool) -> None:
    """Create or replace the secret that signs MODEL's webhook deliveries; shown once."""
    ctx = click.get_current_context()
    root = ctx.find_root().params
    channel = controller_channel(root["controller"], client_ca(root["tls_ca"]))
    ctx.call_on_close(channel.close)
    stub = asv_grpc.WebhookSecretServiceStub(with_api_key(channel, root_api_key()))
    if delete:
        stub.DeleteWebhookSecret(asv.DeleteWebhookSecretRequest(model_id=model), timeout=CALL_TIMEOUT_SECONDS)
        click.echo(f"Deleted the webhook secret of {model}.")
        return
    answer = stub.RotateWebhookSecret(asv.RotateWebhookSecretRequest(model_id=model), timeout=CALL_TIMEOUT_SECONDS)
    click.echo(answer.secret)
    click.echo(
        "Verify deliveries: HMAC-SHA256(secret, X-Slipway-Webhook-Timestamp + '.' + body) == X-Slipway-Signature (v1=…)",
        err=True,
    )
