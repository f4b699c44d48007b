"""Slow, stalled, oversized and too many clients against a real gateway: each is bounded
in time and memory and answered with a specific error, not left to pin the gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import grpc
import pytest
from conftest import data_plane_flags, on_python_plane, start_gateway, stop_or_explain, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.http_limits import HttpLimits
from gateway.server import Gateway, GrpcLimits
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES

# Every test runs on both data planes (tests/conftest.py), but those of the Python gateway's
# buffered-body budget, which the native plane has no counterpart of.
pytestmark = pytest.mark.both_data_planes
BUDGET_ONLY = pytest.mark.python_plane_only(
    reason="the buffered-body budget bounds the Python gateway's memory; HAProxy streams bodies through fixed buffers"
)

# No model by this ID: a request that gets past the body limits is answered 404.
PREDICT = "/model/m_nothing/production/predict"


@pytest.fixture
async def gateway_with(controller, data_plane):
    """Starts gateways with the settings given, on the test's data plane; stops them all at the end."""
    started: list[Gateway] = []

    async def start(**overrides) -> Gateway:
        started.append(await start_gateway(controller, data_plane=data_plane, **overrides))
        return started[-1]

    yield start
    for gateway in started:
        await stop_or_explain(gateway.stop(), "gateway")


async def connect(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gateway.http_port)


def request_head(length: int | None, path: str = PREDICT, expect_continue: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    expect = "Expect: 100-continue\r\n" if expect_continue else ""
    return f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{framing}\r\n{expect}\r\n".encode()


async def read_response(reader: asyncio.StreamReader, timeout: float = 5) -> tuple[int, dict]:
    """Status and JSON body of one response; fails if none arrives within `timeout`."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), timeout)
    return int(lines[0].split()[1]), json.loads(body)


async def closed_by_gateway(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    """True once the gateway has closed the connection (everything it sent is read)."""
    async with asyncio.timeout(timeout):
        while await reader.read(65536):
            pass
    return True


async def test_a_declared_body_over_the_limit_is_refused_at_once_without_reading_it(gateway_with):
    gateway = await gateway_with()
    reader, writer = await connect(gateway)
    writer.write(request_head(100 * 1024**3))  # 100 GiB announced, nothing sent
    status, body = await read_response(reader)
    assert status == 413
    assert body["error"]["code"] == "RESOURCE_EXHAUSTED" and body["error"]["reason"] == "REQUEST_TOO_LARGE"
    assert str(DEFAULT_MAX_REQUEST_BYTES) in body["error"]["message"]
    if on_python_plane(gateway):  # nothing of it was buffered
        assert gateway.http_bodies.budget.held == 0
    writer.close()


@BUDGET_ONLY
async def test_100_continue_is_sent_only_for_a_body_the_gateway_admits(gateway_with):
    gateway = await gateway_with(http_limits=HttpLimits(max_buffered_body_bytes=1000))
    reader, writer = await connect(gateway)
    writer.write(request_head(DEFAULT_MAX_REQUEST_BYTES + 1, expect_continue=True))
    assert (await read_response(reader))[0] == 413  # and no "100 Continue" before it
    reader, writer = await connect(gateway)
    writer.write(request_head(1001, expect_continue=True))
    assert (await read_response(reader))[1]["error"]["reason"] == "GATEWAY_BUSY"

    reader, writer = await connect(gateway)
    writer.write(request_head(2, expect_continue=True))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"{}")
    assert (await read_response(reader))[0] == 404


async def test_a_stalled_body_gets_408_and_its_connection_closed(gateway_with):
    gateway = await gateway_with(http_limits=HttpLimits(body_idle_timeout_seconds=0.3))
    reader, writer = await connect(gateway)
    writer.write(request_head(1000) + b'{"part": ')
    status, body = await read_response(reader)
    assert status == 408 and body["error"]["reason"] == "REQUEST_BODY_TIMEOUT"
    assert "0.3s" in body["error"]["message"]
    if on_python_plane(gateway):  # the Python gateway counts what it read, and lets it go
        assert "no bytes for 0.3s" in body["error"]["message"] and "9 of 1000 bytes" in body["error"]["message"]
    assert await closed_by_gateway(reader)
    if on_python_plane(gateway):
        assert gateway.http_bodies.budget.held == 0


async def test_a_body_trickled_slower_than_the_total_bound_gets_408(gateway_with):
    limits = HttpLimits(body_idle_timeout_seconds=5, body_timeout_seconds=0.5)
    gateway = await gateway_with(http_limits=limits)
    reader, writer = await connect(gateway)
    writer.write(request_head(1000))

    async def trickle():
        while True:  # each byte is progress, so only the total bound can end it
            writer.write(b" ")
            await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    try:
        status, body = await read_response(reader)
    finally:
        trickling.cancel()
    assert status == 408 and "not complete within 0.5s" in body["error"]["message"]


async def test_a_client_trickling_its_headers_is_disconnected(gateway_with):
    gateway = await gateway_with(http_limits=HttpLimits(idle_timeout_seconds=0.3))
    reader, writer = await connect(gateway)
    writer.write(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: gw\r\n")

    async def trickle():
        while True:
            writer.write(b"X")
            await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    try:
        assert await closed_by_gateway(reader)
    finally:
        trickling.cancel()


async def test_an_idle_keep_alive_connection_is_closed(gateway_with):
    gateway = await gateway_with(http_limits=HttpLimits(idle_timeout_seconds=1))
    reader, writer = await connect(gateway)
    writer.write(request_head(2) + b"{}")
    status, _ = await read_response(reader)
    assert status == 404  # served, and kept alive
    assert await closed_by_gateway(reader)
    if on_python_plane(gateway):
        await wait_until(lambda: gateway.http_site.open_connections == 0, timeout=5, what="the connection to be let go")


async def test_connections_beyond_the_cap_are_refused_with_503(gateway_with):
    gateway = await gateway_with(http_limits=HttpLimits(max_connections=2))
    held = [await connect(gateway) for _ in range(2)]
    for reader, writer in held:  # each answered and kept alive: both are open on the gateway's side
        writer.write(request_head(2) + b"{}")
        assert (await read_response(reader))[0] == 404

    # The Python plane answers such a connection at once; the native one (HAProxy, in HTTP mode)
    # answers its first request: the caller sees the same 503 either way.
    reader, writer = await connect(gateway)
    writer.write(request_head(2) + b"{}")
    status, body = await read_response(reader)
    assert status == 503 and body["error"]["reason"] == "TOO_MANY_CONNECTIONS"
    assert "2 open HTTP connections" in body["error"]["message"]
    assert await closed_by_gateway(reader)

    held.pop()[1].close()

    async def admitted() -> bool:
        reader, writer = await connect(gateway)
        writer.write(request_head(2) + b"{}")
        status, _ = await read_response(reader)
        writer.close()
        return status == 404

    await wait_until(admitted, timeout=5, what="a connection to be admitted once one ended")


@BUDGET_ONLY
async def test_the_gateway_command_takes_the_connection_cap_and_body_budget(controller, tmp_path, data_plane):
    from test_restart import free_port

    http_port = free_port()
    command = [sys.executable, "-m", "slipway", "--controller", controller.address, "gateway"]
    # The fixture's controller has no keys: neither has this gateway.
    flags = ["--gateway-port", "0", "--http-port", str(http_port), "--max-http-connections", "1", "--insecure-no-auth"]
    # The Python data plane answers a connection past the cap at once, before any request
    # (the native one answers its first request: tests/test_native_proxy.py).
    flags += ["--data-plane", "python"]
    flags += ["--internal-token-file", str(controller.settings.data_dir / "internal.token")]
    with open(tmp_path / "gateway.log", "wb") as log:
        flags += ["--max-buffered-request-bytes", "10", *data_plane_flags(data_plane)]
        process = subprocess.Popen([*command, *flags], stdout=log, stderr=log)
    try:

        async def first_connection():
            try:
                return await asyncio.open_connection("127.0.0.1", http_port)
            except OSError:
                return None

        reader, writer = await wait_until(first_connection, timeout=20, what="the gateway to listen")
        writer.write(request_head(11))
        assert (await read_response(reader))[1]["error"]["reason"] == "GATEWAY_BUSY"
        refused, _ = await asyncio.open_connection("127.0.0.1", http_port)
        assert (await read_response(refused))[1]["error"]["reason"] == "TOO_MANY_CONNECTIONS"
    finally:
        process.kill()  # SIGTERM would wait out aiohttp's lingering on the refused request
        process.wait(10)


@BUDGET_ONLY
async def test_buffered_body_bytes_are_capped_across_requests(gateway_with):
    gateway = await gateway_with(http_limits=HttpLimits(max_buffered_body_bytes=1000))
    budget = gateway.http_bodies.budget
    slow_reader, slow_writer = await connect(gateway)
    slow_writer.write(request_head(800) + b" " * 100)
    await wait_until(lambda: budget.held == 800, timeout=5, what="the first body to be admitted")

    reader, writer = await connect(gateway)
    writer.write(request_head(300))
    status, body = await read_response(reader)
    assert status == 503 and body["error"]["reason"] == "GATEWAY_BUSY"
    assert "limit of 1000 bytes" in body["error"]["message"]

    # Without a declared length the bytes are counted as they arrive.
    reader, writer = await connect(gateway)
    writer.write(request_head(None) + b"64\r\n" + b" " * 100 + b"\r\n")
    await wait_until(lambda: budget.held == 900, timeout=5, what="the chunked body to be counted")
    writer.write(b"c8\r\n" + b" " * 200 + b"\r\n")
    status, body = await read_response(reader)
    assert status == 503 and body["error"]["reason"] == "GATEWAY_BUSY"
    await wait_until(lambda: budget.held == 800, timeout=5, what="the refused chunked body to be let go")

    slow_writer.write(b" " * 700)
    assert (await read_response(slow_reader))[0] == 404
    assert budget.held == 0
    reader, writer = await connect(gateway)
    writer.write(request_head(300) + b" " * 300)
    assert (await read_response(reader))[0] == 404


async def test_an_idle_grpc_connection_is_closed(gateway_with):
    gateway = await gateway_with(grpc_limits=GrpcLimits(max_connection_idle_seconds=1))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        await wait_until(
            lambda: channel.get_state() is grpc.ChannelConnectivity.IDLE, timeout=5, what="the server to close it"
        )


async def test_grpc_calls_beyond_the_server_cap_are_refused(gateway_with):
    gateway = await gateway_with(grpc_limits=GrpcLimits(max_concurrent_rpcs=1))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)  # stays open: the one call allowed
        assert (await anext(watch.__aiter__())).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        watch.cancel()
