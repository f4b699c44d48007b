"""Traces of the data plane with OpenTelemetry: off unless an OTLP endpoint is configured.

The gateway (`--otlp-endpoint` / `SLIPWAY_OTLP_ENDPOINT`) and every replica (the controller
passes its own endpoint on to them) export spans over OTLP/gRPC. A caller's W3C
`traceparent` (HTTP header or gRPC metadata) is the parent of the gateway's span, and the
gateway passes the trace on to the replica in the call's metadata, so one request is one
trace: gateway request → route resolution, wake wait, forward → replica call →
preprocess, queue wait, predict, postprocess.

Call sites use the hooks below. While tracing is off each one returns a shared do-nothing
object or its argument unchanged: no span is made, and opentelemetry is not even imported.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

ENDPOINT_SETTING = "--otlp-endpoint / SLIPWAY_OTLP_ENDPOINT"
# Span attribute names (also set on the resource of a replica's spans).
MODEL_ID = "slipway.model_id"
DEPLOYMENT_ID = "slipway.deployment_id"
REPLICA_ID = "slipway.replica_id"
REPLICA_ADDRESS = "slipway.replica_address"
MODEL_NAME = "slipway.model_name"
METHOD = "slipway.method"
TRACE_HEADERS = ("traceparent", "tracestate")
# Longest traceparent/tracestate value looked at (W3C: traceparent is 55 characters, tracestate
# at most 32 members of 256); a longer one is ignored, as the propagator ignores a malformed one.
MAX_HEADER_CHARS = 8192

_NOOP = contextlib.nullcontext()
_lock = threading.Lock()
_tracer: Any = None
_provider: Any = None
_propagator: Any = None
_attributes: dict[str, str] = {}


class TracingError(ValueError):
    """An OTLP endpoint that cannot be used (said at start, with the setting's name)."""


def enabled() -> bool:
    return _tracer is not None


def check_endpoint(endpoint: str) -> str:
    """`http://host:port` (plaintext) or `https://host:port` (TLS, verified with the system's CAs)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/"):
        raise TracingError(
            f"OTLP endpoint {endpoint!r} is not http://HOST:PORT or https://HOST:PORT ({ENDPOINT_SETTING})"
        )
    return endpoint


def configure(service_name: str, endpoint: str | None, attributes: Mapping[str, str] | None = None) -> bool:
    """Export this process's spans to `endpoint` over OTLP/gRPC; nothing (off) when it is
    empty. `attributes` describe the process (resource) and go on every span it makes.
    True if tracing is now on."""
    if not endpoint:
        return False
    check_endpoint(endpoint)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    install(service_name, BatchSpanProcessor(exporter), attributes)
    return True


def install(service_name: str, processor: Any, attributes: Mapping[str, str] | None = None) -> None:
    """Turn tracing on with a span processor of the SDK (configure's, or a test's in-memory one)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    global _tracer, _provider, _propagator, _attributes
    with _lock:
        if _provider is not None:
            _provider.shutdown()
        attributes = {key: value for key, value in (attributes or {}).items() if value}
        provider = TracerProvider(resource=Resource.create({"service.name": service_name, **attributes}))
        provider.add_span_processor(processor)
        # Not the global provider: in one process (`slipway up`, tests) each part keeps its own.
        _provider, _attributes = provider, attributes
        _propagator = TraceContextTextMapPropagator()
        _tracer = provider.get_tracer("slipway")


def shutdown() -> None:
    """Export what is pending and turn tracing off."""
    global _tracer, _provider
    with _lock:
        provider, _tracer, _provider = _provider, None, None
    if provider is not None:
        provider.shutdown()


def server_span(
    name: str, headers: Mapping[str, str] | Iterable[tuple[str, str | bytes]] | None, **attributes: str
) -> contextlib.AbstractContextManager[Any]:
    """The span of one request this process serves, a child of the caller's `traceparent`
    found in `headers` (HTTP headers, or gRPC metadata pairs); a new trace without one."""
    tracer = _tracer
    if tracer is None:
        return _NOOP
    from opentelemetry.trace import SpanKind

    context = _propagator.extract(_carrier(headers))
    return tracer.start_as_current_span(
        name, context=context, kind=SpanKind.SERVER, attributes=_with_process(attributes)
    )


def grpc_server_span(name: str, context: Any, model_id: str = "") -> contextlib.AbstractContextManager[Any]:
    """server_span for a gRPC call (`context`: its grpc.aio.ServicerContext); the metadata is
    read only while tracing is on."""
    if _tracer is None:
        return _NOOP
    attributes = {"rpc.system": "grpc", "rpc.method": name, MODEL_ID: model_id}
    return server_span(name, context.invocation_metadata(), **attributes)


def http_server_span(request: Any, model_id: str = "") -> contextlib.AbstractContextManager[Any]:
    """server_span for an HTTP request (an aiohttp web.Request), named `METHOD route`."""
    if _tracer is None:
        return _NOOP
    route = request.match_info.route.resource
    template = route.canonical if route is not None else request.path
    attributes = {"http.request.method": request.method, "http.route": template, MODEL_ID: model_id}
    return server_span(f"{request.method} {template}", request.headers, **attributes)


def span(name: str, **attributes: str) -> contextlib.AbstractContextManager[Any]:
    """A child of the current span (none while tracing is off)."""
    tracer = _tracer
    if tracer is None:
        return _NOOP
    return tracer.start_as_current_span(name, attributes=_with_process(attributes))


def client_span(name: str, **attributes: str) -> contextlib.AbstractContextManager[Any]:
    """A child span for a call to another process (whose metadata then takes `outgoing`)."""
    tracer = _tracer
    if tracer is None:
        return _NOOP
    from opentelemetry.trace import SpanKind

    return tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=_with_process(attributes))


def annotate(**attributes: str) -> None:
    """Add attributes to the current span (once known: the deployment a target resolved to)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes({key: value for key, value in attributes.items() if value})


def outgoing(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the current trace context (`traceparent`) for the next hop; while
    tracing is off, `metadata` itself."""
    if _tracer is None:
        return metadata
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return (*metadata, *carrier.items())


@contextlib.contextmanager
def collecting(service_name: str) -> Iterator[Any]:
    """Tracing on into the SDK's in-memory exporter while the block runs (tests); yields it."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    install(service_name, SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        shutdown()


def _carrier(headers: Mapping[str, str] | Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    if headers is None:
        return carrier
    if isinstance(headers, Mapping):  # HTTP headers (case-insensitive in aiohttp)
        for name in TRACE_HEADERS:
            value = headers.get(name)
            if isinstance(value, str) and len(value) <= MAX_HEADER_CHARS:
                carrier[name] = value
        return carrier
    for key, value in headers:  # gRPC metadata: lowercase keys
        if key in TRACE_HEADERS and isinstance(value, str) and len(value) <= MAX_HEADER_CHARS:
            carrier[key] = value
    return carrier


def _with_process(attributes: Mapping[str, str]) -> dict[str, str]:
    merged = {**_attributes, **attributes}
    return {key: value for key, value in merged.items() if value}
