"""The data plane's message size limit: one operator setting (`--max-request-bytes`,
`SLIPWAY_MAX_REQUEST_BYTES`) that the gateway (HTTP and gRPC) and every replica honour.

It bounds a request body and a model's answer (a unary response, or one chunk of a
stream). The handlers check it themselves and refuse with a precise error; grpc's own
limits sit a little above it, so that grpc core (whose refusal is a bare
RESOURCE_EXHAUSTED) answers only a gRPC message more than the headroom over the limit,
which it refuses before reading it whole.
"""

from __future__ import annotations

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Room for the fields around the payload (content type, target) in a gRPC message.
GRPC_HEADROOM_BYTES = 64 * 1024
# grpc message lengths are 32-bit signed integers.
LARGEST_MAX_REQUEST_BYTES = 2**31 - 1 - GRPC_HEADROOM_BYTES

REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
SETTING = "--max-request-bytes / SLIPWAY_MAX_REQUEST_BYTES"


def grpc_message_options(max_request_bytes: int) -> list[tuple[str, int]]:
    """Channel or server options: grpc's own limits, with headroom over the setting."""
    length = max_request_bytes + GRPC_HEADROOM_BYTES
    return [("grpc.max_receive_message_length", length), ("grpc.max_send_message_length", length)]


# On the native data plane's fast path the proxy tells the replica the gateway's own limit
# (trusted: the replica token authenticates the proxy), which the replica then enforces too.
GATEWAY_LIMIT_HEADER = "x-slipway-gateway-max-request-bytes"


def gateway_limit(value: object) -> int | None:
    """The gateway's limit from GATEWAY_LIMIT_HEADER's value (None: absent or not a size)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10 and int(value) > 0:
        return min(int(value), LARGEST_MAX_REQUEST_BYTES)
    return None


def replica_receive_options(max_request_bytes: int) -> list[tuple[str, int]]:
    """A replica's grpc server options: it receives a message over its own limit up to the
    largest gateway limit it names in a refusal (that of a gateway left at the default, or as
    large again as its own), so that grpc core refuses only beyond that, and the replica
    answers the rest with a rich status naming whichever limit was crossed."""
    options = dict(grpc_message_options(max_request_bytes))
    received = max_request_bytes + max(max_request_bytes, DEFAULT_MAX_REQUEST_BYTES) + GRPC_HEADROOM_BYTES
    options["grpc.max_receive_message_length"] = min(received, 2**31 - 1)
    return list(options.items())


def too_large(what: str, size: int | None, limit: int) -> str:
    """The message of a refusal: what was too large, by how much (None: unknown), and the setting."""
    measured = "" if size is None else f" {size} bytes,"
    return f"{what} is{measured} over the limit of {limit} bytes ({_human(limit)}; {SETTING})"


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


# Largest secret value (controller/secrets.py); the CLI refuses a larger one before sending it.
MAX_SECRET_BYTES = 64 * 1024
