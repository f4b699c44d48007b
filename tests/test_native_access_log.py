"""HAProxy's fast-path log lines, read by the gateway into the request metrics and loads
(gateway/native/access_log.py). End to end (HAProxy in front of real replicas) in
tests/test_metrics_gateway.py's [native] cases."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import defaultdict

import pytest

from gateway.forwarder import LoadMeter
from gateway.metrics import GatewayMetrics
from gateway.native.access_log import AccessLog, Answer, Malformed, parse
from gateway.routing import RouteIndex
from slipway.v1 import route_service_pb2 as rt

T0 = 1_700_000_000_000_000


def line(backend: str, status: int, grpc_status: str = "-", stream: str = "-", term: str = "--", micros: int = 2500):
    return f"{backend} {status} {grpc_status} {stream} {term} 17 {T0} {T0 + 1000} {T0 + micros}".encode()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (line("h3", 200), Answer("http", 3, "200", 200, 0.0025, 0.0)),
        (line("h0", 500), Answer("http", 0, "500", 500, 0.0025, 0.0)),
        (line("h0", 200, stream="1"), Answer("http", 0, "200", 200, 0.0025, 0.001)),
        (line("h1", 200, term="CD"), Answer("http", 1, "499", 499, 0.0025, 0.0)),
        # A unary call that went on to its trailers (grpc-status there: not logged) is OK.
        (line("g2", 200), Answer("grpc", 2, "OK", 200, 0.0025, 0.0)),
        (line("g2", 200, stream="1"), Answer("grpc", 2, "OK", 200, 0.0025, 0.001)),
        # Trailers-Only: the status is in the headers (a replica's error, HAProxy's own 503 page).
        (line("g2", 200, "13", stream="1"), Answer("grpc", 2, "INTERNAL", 500, 0.0025, 0.0)),
        (line("g0", 200, "14"), Answer("grpc", 0, "UNAVAILABLE", 503, 0.0025, 0.0)),
        (line("g0", 200, "5"), Answer("grpc", 0, "NOT_FOUND", 404, 0.0025, 0.0)),
        (line("g0", 502), Answer("grpc", 0, "UNAVAILABLE", 503, 0.0025, 0.0)),
        (line("g0", 200, term="CD"), Answer("grpc", 0, "CANCELLED", 499, 0.0025, 0.0)),
    ],
)
def test_a_line_is_the_answer_the_caller_got(raw: bytes, expected: Answer) -> None:
    assert parse(raw) == expected


def test_requests_python_served_or_haproxy_refused_unrouted_are_not_the_fast_path() -> None:
    assert parse(line("py_http", 200)) is None
    assert parse(line("http_in", 400)) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"h0 200",
        line("h0", 200) + b" extra",
        line("hx", 200).replace(b"hx", b"h0", 1).replace(b"200", b"abc", 1),
        line("g0", 200, "99"),
        line("g0", 200, "x"),
        b"h0 200 - - -- 1 5 - 4",
        b"h0 200 - - -- 1 x - 4",
    ],
)
def test_a_malformed_line_is_refused(raw: bytes) -> None:
    with pytest.raises(Malformed):
        parse(raw)


class World:
    """An AccessLog following a stand-in for HAProxy's admin socket (a unix stream listener)."""

    def __init__(self, tmp_path) -> None:
        self.index = RouteIndex()
        model = rt.ModelRoute(model_id="m1", model_name="one", production_deployment_id="d1")
        deployment = rt.DeploymentRoute(deployment_id="d1", model_id="m1")
        self.index.apply(rt.WatchRoutesResponse(reset=True, models=[model], deployments=[deployment]))
        self.metrics = GatewayMetrics(lambda: self.index)
        self.loads: defaultdict[str, LoadMeter] = defaultdict(LoadMeter)
        self.metrics.count_answers(lambda d, cls, seconds: self.loads[d].answer(cls, seconds))
        self.log = AccessLog(self.metrics, lambda: self.index, lambda: {"d1": 0})
        path = os.path.join(tmp_path, "admin.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        self.log.connect(path)
        self.haproxy, _ = listener.accept()
        listener.close()
        assert self.haproxy.recv(100) == b"show events slipway_log -w -n\n"

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


async def test_lines_streamed_become_the_python_planes_series_and_load(tmp_path) -> None:
    world = World(tmp_path)
    labels = {"model_id": "m1", "deployment_id": "d1", "environment": "production"}
    lines = [line("h0", 200, micros=2000)] * 3 + [line("h0", 503, micros=2000), line("g0", 200, "13")]
    stream = b"".join(raw + b"\n" for raw in [*lines, b"garbage", line("h7", 200)])
    world.haproxy.sendall(stream[:10])  # a line split across reads is read whole
    world.log.drain()
    world.haproxy.sendall(stream[10:])
    world.log.drain()
    requests = "slipway_inference_requests_total"
    assert world.value(requests, **labels, protocol="http", status_code="200", grpc_code="") == 3
    assert world.value(requests, **labels, protocol="http", status_code="503", grpc_code="") == 1
    assert world.value(requests, **labels, protocol="grpc", status_code="", grpc_code="INTERNAL") == 1
    assert world.value("slipway_inference_duration_seconds_count", **labels, protocol="http") == 4
    assert world.value("slipway_inference_duration_seconds_bucket", **labels, protocol="http", le="0.0025") == 4
    assert world.value("slipway_inference_duration_seconds_bucket", **labels, protocol="http", le="0.001") == 0
    # h7 has no deployment (its slot is free): not counted, as no caller's target resolved there.
    assert world.value("slipway_native_log_malformed_total") == 1
    answered, buckets = world.loads["d1"].take_answers()
    assert answered == {2: 3, 4: 0, 5: 2} and sum(buckets) == 5
    # The loop reader picks lines up by itself too.
    world.haproxy.sendall(line("h0", 200) + b"\n")
    for _ in range(200):
        if world.log.recorded == 6:
            break
        await asyncio.sleep(0.01)
    assert world.log.recorded == 6
    # A line longer than any HAProxy sends is dropped, not buffered; the stream's end is seen.
    world.haproxy.sendall(b"x" * 5000)
    world.log.drain()
    assert world.value("slipway_native_log_malformed_total") == 2
    world.haproxy.close()
    world.log.drain()
    assert not world.log.connected
