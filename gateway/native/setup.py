"""Which data plane a gateway runs (`--data-plane python|native|auto`), and the native one's
HAProxy settings from the gateway's (limits, timeouts, TLS)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.forwarder import LoadMeter
from gateway.metrics import GatewayMetrics
from gateway.native.config import ProxyConfig
from gateway.native.proxy import HAPROXY_ENV, NativeDataPlane, find_haproxy
from gateway.routing import RouteIndex
from slipway import data_plane

if TYPE_CHECKING:
    from gateway.server import GatewaySettings

log = logging.getLogger("slipway.gateway.native")


class NativeUnavailable(Exception):
    """`--data-plane native` on a host without HAProxy."""


def native_data_plane(
    settings: GatewaySettings,
    index: Callable[[], RouteIndex],
    loads: dict[str, LoadMeter],
    metrics: GatewayMetrics | None = None,
) -> NativeDataPlane | None:
    """The native data plane the settings ask for, or None (the Python one). `auto` is native
    wherever haproxy is installed, and Python (said in a log line) elsewhere, with
    `--workers N` (the workers share the ports themselves), or with tracing on."""
    mode = settings.data_plane
    if mode not in data_plane.DATA_PLANES:
        raise ValueError(f"unknown data plane {mode!r}: choose one of {', '.join(data_plane.DATA_PLANES)}")
    if mode == data_plane.PYTHON:
        return None
    if mode == data_plane.AUTO and settings.otlp_endpoint:
        # HAProxy 2.6 makes no OpenTelemetry spans: the fast path would leave the gateway out of every trace.
        log.info(
            "tracing is on (--otlp-endpoint): the gateway runs the Python data plane, which makes the gateway's spans"
        )
        return None
    haproxy = find_haproxy()
    if settings.reuse_port:
        if mode == data_plane.NATIVE:
            raise NativeUnavailable("the native data plane takes one gateway process: drop --workers")
        return None
    if haproxy is None:
        if mode == data_plane.NATIVE:
            raise NativeUnavailable(
                f"the native data plane needs HAProxy: install it (make haproxy-bin) or name it in ${HAPROXY_ENV}"
            )
        log.info("haproxy is not installed: the gateway runs the Python data plane (make haproxy-bin)")
        return None
    http, grpc = settings.http_limits, settings.grpc_limits
    base = ProxyConfig(
        run_dir="",
        grpc_bind="",
        http_bind="",
        python_grpc="",
        python_http="",
        slots=settings.native_slots,
        max_request_bytes=settings.max_request_bytes,
        require_keys=settings.require_api_keys,
        request_timeout_seconds=settings.request_timeout_seconds,
        header_timeout_seconds=http.idle_timeout_seconds,
        http_idle_seconds=http.idle_timeout_seconds,
        body_idle_seconds=http.body_idle_timeout_seconds,
        grpc_idle_seconds=grpc.max_connection_idle_seconds,
        python_timeout_seconds=settings.request_timeout_seconds + settings.replica_wait_seconds + 5,
        max_http_connections=http.max_connections,
        max_grpc_connections=grpc.max_concurrent_rpcs,
    )
    tls = settings.tls
    return NativeDataPlane(
        base,
        index,
        loads,
        haproxy,
        settings.host,
        settings.grpc_port,
        settings.http_port,
        settings.shutdown_grace_seconds,
        None if tls is None else tls.certificate_chain.rstrip(b"\n") + b"\n" + tls.private_key,
        metrics,
    )
