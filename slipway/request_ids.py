"""Request IDs: every inference answer names its request, and the model's log lines for
that request carry the same ID.

The gateway gives each request an ID, or adopts the caller's `X-Request-Id` (gRPC
metadata `x-request-id`) when it is 1-128 characters of [A-Za-z0-9._:-]; anything else
(too long, spaces, other characters) is not refused, since a tracing header should never
break a call: the request gets a fresh ID, which the answer carries as usual."""

from __future__ import annotations

import re
import secrets

# What answers carry (HTTP header; gRPC trailing metadata, lowercase) and what the gateway
# sends the replica.
RESPONSE_HEADER = "X-Slipway-Request-Id"
METADATA_KEY = "x-slipway-request-id"
# What a caller may send to choose the ID.
CALLER_HEADER = "X-Request-Id"
CALLER_METADATA_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
VALID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_CHARS}}}")


def new_request_id() -> str:
    """`req-` and 96 random bits in hex."""
    return "req-" + secrets.token_hex(12)


def is_valid(value: str) -> bool:
    return VALID.fullmatch(value) is not None


def adopt(caller_value: str | None) -> str:
    """The caller's ID when it is a valid one, else a fresh ID."""
    if caller_value and is_valid(caller_value):
        return caller_value
    return new_request_id()
