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


# A gateway's route stream pings its controller every 10 s and gives the stream up when a
# ping is not answered in 5 s (a paused or vanished controller; a dead one is noticed at
# once), then follows the next controller address.
STREAM_KEEPALIVE_OPTIONS: ChannelOptions = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # grpc 1.5x+ ends a connection on an unanswered ping after this (60 s by default), whatever keepalive_timeout says.
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
)
# What a controller's server lets those pings be (grpc's default, one per 5 minutes on a
# stream without data, would count them as abuse and close the connection).
KEEPALIVE_SERVER_OPTIONS: ChannelOptions = (("grpc.http2.min_ping_interval_without_data_ms", 5_000),)
