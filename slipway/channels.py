"""The one place clients build channels to the platform's servers: TLS verified with a
CA when one is given, plaintext otherwise (the default on loopback)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

ChannelOptions = Sequence[tuple[str, Any]]


def secure_or_insecure_channel(address: str, ca: bytes | None, options: ChannelOptions = ()) -> grpc.Channel:
    if ca is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca), options=options)


def secure_or_insecure_aio_channel(address: str, ca: bytes | None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    if ca is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca), options=options)
