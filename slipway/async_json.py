"""The JSON form of an async request: what `GET /async_request/{id}` answers, what a
webhook delivery carries, and what `slipway requests get` prints. One function for all
three, from a stored row (controller) or an AsyncRequest message (gateway, CLI).

The model's output is embedded as JSON when it is JSON (`"output": …`), as a string when it
is text (`text/*`, NDJSON), and in base64 otherwise (`"output_base64": …`)."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

from slipway.v1 import async_service_pb2 as asv

STATUS_NAMES = {value: name.removeprefix("ASYNC_REQUEST_STATUS_") for name, value in asv.AsyncRequestStatus.items()}
WEBHOOK_NAMES = {value: name.removeprefix("WEBHOOK_STATUS_") for name, value in asv.WebhookStatus.items()}


def _time(seconds: float | None) -> str | None:
    if not seconds:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace("+00:00", "Z")


def output_value(output: bytes | None, content_type: str) -> dict[str, Any]:
    output = output or b""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("", "application/json"):
        try:
            return {"output": json.loads(output)}
        except ValueError:
            pass
    if media.startswith("text/") or media in ("application/json", "application/x-ndjson"):
        try:
            return {"output": output.decode("utf-8")}
        except UnicodeDecodeError:
            pass
    return {"output_base64": base64.b64encode(output).decode(), "output_content_type": content_type}


def request_json(f: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": f["request_id"],
        "model_id": f["model_id"],
        "deployment_id": f["deployment_id"],
        "status": f["status"],
        "webhook_status": f["webhook_status"],
        "priority": f["priority"],
        "attempts": f["attempts"],
        "created_at": _time(f["create_time"]),
        "started_at": _time(f["start_time"]),
        "finished_at": _time(f["finish_time"]),
    }
    if f["status"] == "SUCCEEDED":
        body.update(output_value(f["output"], f["output_content_type"]))
    if f["error_reason"]:
        body["error"] = {"code": f["error_code"], "reason": f["error_reason"], "message": f["error_message"]}
    if f["webhook_endpoint"]:
        body["webhook"] = {
            "endpoint": f["webhook_endpoint"],
            "attempts": f["webhook_attempts"],
            "error": f["webhook_error"],
        }
    return body


def webhook_body(request: dict[str, Any]) -> bytes:
    """A delivery: {request_id, model_id, deployment_id, status, output | error, time, attempts}."""
    body = {k: request[k] for k in ("request_id", "model_id", "deployment_id", "status", "attempts")}
    for key in ("output", "output_base64", "output_content_type", "error"):
        if key in request:
            body[key] = request[key]
    body["time"] = request["finished_at"]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def proto_fields(request: asv.AsyncRequest) -> dict[str, Any]:
    def seconds(field: str) -> float | None:
        return getattr(request, field).ToDatetime(datetime.UTC).timestamp() if request.HasField(field) else None

    return {
        "request_id": request.request_id,
        "model_id": request.model_id,
        "deployment_id": request.deployment_id,
        "status": STATUS_NAMES[request.status],
        "webhook_status": WEBHOOK_NAMES[request.webhook_status],
        "priority": request.priority,
        "attempts": request.attempts,
        "create_time": seconds("create_time"),
        "start_time": seconds("start_time"),
        "finish_time": seconds("finish_time"),
        "output": request.output,
        "output_content_type": request.output_content_type,
        "error_code": request.error_code,
        "error_reason": request.error_reason,
        "error_message": request.error_message,
        "webhook_endpoint": request.webhook_endpoint,
        "webhook_attempts": request.webhook_attempts,
        "webhook_error": request.webhook_error,
    }
