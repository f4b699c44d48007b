"""In-process cost of the per-request hooks the data plane runs: the tracing hooks with
tracing off (the default) and on (the SDK's spans into an in-memory exporter), and a
request ID's making and checking. Prints microseconds per request; asserts nothing.

    .venv/bin/python bench/hooks.py [--requests N]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from slipway import request_ids, tracing  # noqa: E402

METADATA = (("x-slipway-replica-token", "t" * 43),)


def per_request(count: int) -> float:
    """The gateway's hooks for one forwarded request: route resolution, forward, the metadata out."""
    started = time.process_time()
    for _ in range(count):
        with tracing.span("route resolution"):
            tracing.annotate(deployment_id="d1", model_id="m1")
        with tracing.span("forward"):
            tracing.outgoing(METADATA)
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    count = args.requests

    print(f"tracing off: {per_request(count):.2f} µs of CPU per request (2 spans + outgoing metadata)")

    started = time.process_time()
    for _ in range(count):
        request_ids.adopt(None)
        request_ids.adopt("order-1234")
    print(f"request IDs: {(time.process_time() - started) / count * 1e6:.2f} µs per request (one made, one adopted)")

    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.install("bench", SimpleSpanProcessor(exporter))
    on_count = max(count // 20, 1)
    cost = per_request(on_count)
    print(f"tracing on:  {cost:.2f} µs of CPU per request, {cost / 2:.1f} µs per span (in-memory export)")
    tracing.shutdown()


if __name__ == "__main__":
    main()
