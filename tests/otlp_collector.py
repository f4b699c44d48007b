"""A real OTLP/gRPC trace collector for tests: the TraceService of the OpenTelemetry
protocol (opentelemetry-proto's service definitions) on a loopback port, keeping every span
that gateways and replicas export to it."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, str] = field(default_factory=dict)
    resource: dict[str, str] = field(default_factory=dict)


def _attributes(pairs: list[common_pb2.KeyValue]) -> dict[str, str]:
    return {pair.key: pair.value.string_value for pair in pairs}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ExportedSpan] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Collector:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop(None)

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context):
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(list(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ExportedSpan(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes=_attributes(list(span.attributes)),
                            resource=resource,
                        )
                    )
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: str) -> list[ExportedSpan]:
        with self._lock:
            return [span for span in self._spans if span.trace_id == trace_id]

    def wait_for(self, trace_id: str, names: set[str], timeout: float = 30.0) -> list[ExportedSpan]:
        """The trace's spans once it holds every name in `names` (polled; exporters batch)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans(trace_id)
            if names <= {span.name for span in spans}:
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"trace {trace_id} has {sorted(s.name for s in spans)}, expected {sorted(names)}")
            time.sleep(0.05)
