"""Which API key a client sends, and sending it on every call of a channel.

The key is, in order: the one given (`--api-key`), SLIPWAY_API_KEY, or the admin key a
local controller wrote at its first start (`<data dir>/admin.key`; the data dir from
`--data-dir` or SLIPWAY_DATA_DIR, else the nearest `.slipway` in the current directory
or a parent, so that commands run inside a package directory find it too)."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import grpc

ADMIN_KEY_FILE = "admin.key"
DEFAULT_DATA_DIR = Path(".slipway")


def find_api_key(api_key: str | None = None, data_dir: Path | None = None) -> str:
    """The key to send, or "" when there is none (a server without authentication)."""
    if api_key:
        return api_key.strip()
    if os.environ.get("SLIPWAY_API_KEY"):
        return os.environ["SLIPWAY_API_KEY"].strip()
    if data_dir is None and os.environ.get("SLIPWAY_DATA_DIR"):
        data_dir = Path(os.environ["SLIPWAY_DATA_DIR"])
    if data_dir is not None:
        candidates = [data_dir / ADMIN_KEY_FILE]
    else:
        here = Path.cwd()
        candidates = [directory / DEFAULT_DATA_DIR / ADMIN_KEY_FILE for directory in (here, *here.parents)]
    for candidate in candidates:
        try:
            return candidate.read_text().strip()
        except OSError:
            continue
    return ""


def authorization(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Api-Key {api_key}"),) if api_key else ()


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """A call's details with other metadata (grpc's examples build them the same way)."""


class _KeyMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, api_key: str) -> None:
        self._metadata = authorization(api_key)

    def _call(self, continuation, details, request):
        metadata = (*(details.metadata or ()), *self._metadata)
        return continuation(
            _CallDetails(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                details.wait_for_ready,
                details.compression,
            ),
            request,
        )

    intercept_unary_unary = intercept_unary_stream = _call
    intercept_stream_unary = intercept_stream_stream = _call


def with_api_key(channel: grpc.Channel, api_key: str) -> grpc.Channel:
    """`channel`, sending `api_key` on every call (unchanged without a key)."""
    return grpc.intercept_channel(channel, _KeyMetadata(api_key)) if api_key else channel
