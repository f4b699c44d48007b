"""`slipway top`: its arithmetic on known histograms, and `--once` against a real
controller and gateway."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys

import grpc
from conftest import Api, wait_until

from slipway.top_command import quantile, read, rows
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc

GATEWAY_BEFORE = """
slipway_inference_requests_total{model_id="m1",deployment_id="d1",environment="production",protocol="http",status_code="200",grpc_code=""} 10
slipway_inference_duration_seconds_bucket{model_id="m1",deployment_id="d1",environment="production",protocol="http",le="0.01"} 10
slipway_inference_duration_seconds_bucket{model_id="m1",deployment_id="d1",environment="production",protocol="http",le="0.1"} 10
slipway_inference_duration_seconds_bucket{model_id="m1",deployment_id="d1",environment="production",protocol="http",le="+Inf"} 10
"""
GATEWAY_AFTER = """
slipway_inference_requests_total{model_id="m1",deployment_id="d1",environment="production",protocol="http",status_code="200",grpc_code=""} 26
slipway_inference_requests_total{model_id="m1",deployment_id="d1",environment="production",protocol="http",status_code="500",grpc_code=""} 4
slipway_inference_requests_total{model_id="",deployment_id="",environment="",protocol="http",status_code="404",grpc_code=""} 7
slipway_inference_duration_seconds_bucket{model_id="m1",deployment_id="d1",environment="production",protocol="http",le="0.01"} 20
slipway_inference_duration_seconds_bucket{model_id="m1",deployment_id="d1",environment="production",protocol="http",le="0.1"} 30
slipway_inference_duration_seconds_bucket{model_id="m1",deployment_id="d1",environment="production",protocol="http",le="+Inf"} 30
slipway_inference_in_flight{model_id="m1",deployment_id="d1",environment="production"} 3
"""
CONTROLLER = """
slipway_deployment_replicas{model_id="m1",deployment_id="d1",environment="production",phase="ready"} 2
slipway_deployment_replicas{model_id="m1",deployment_id="d1",environment="production",phase="starting"} 1
slipway_deployment_desired_replicas{model_id="m1",deployment_id="d1",environment="production"} 3
"""


def test_quantiles_interpolate_within_buckets_as_prometheus_does():
    buckets = {0.01: 10.0, 0.1: 30.0, math.inf: 30.0}
    assert quantile(0.5, buckets) == 0.01 + 0.09 * (15 - 10) / 20
    assert quantile(0.25, buckets) == 0.01 * 7.5 / 10
    assert math.isnan(quantile(0.5, {0.01: 0.0, math.inf: 0.0}))
    assert quantile(0.99, {0.01: 0.0, math.inf: 5.0}) == 0.01  # all above the last bound: that bound


def test_a_frame_is_rates_and_percentiles_over_the_interval():
    before = read([GATEWAY_BEFORE, CONTROLLER])
    after = read([GATEWAY_AFTER, CONTROLLER])
    (row,) = rows(before, after, 2.0)
    assert (row.deployment_id, row.model_id, row.environment) == ("d1", "m1", "production")
    assert (row.ready, row.desired, row.in_flight) == (2, 3, 3)
    assert row.req_per_s == 10.0 and row.errors_per_s == 2.0 and row.requests == 30
    # The interval's 20 requests: 10 under 10 ms, 10 between 10 and 100 ms.
    assert math.isclose(row.p50_ms, 10.0) and math.isclose(row.p99_ms, 10 + 90 * 9.8 / 10)


async def test_top_once_against_a_running_platform(api: Api, controller, gateway):
    pushed = await api.push(api.package("m"), target=ds.PUSH_TARGET_PRODUCTION)
    deployment_id = pushed.deployment.id
    await api.wait_production(pushed.model.id, deployment_id)
    await wait_until(lambda: gateway.follower.index.deployments[deployment_id].endpoints, what="a routed replica")
    urls = (
        f"--controller-metrics={controller.http_url}/metrics",
        f"--gateway-metrics=http://127.0.0.1:{gateway.http_port}/metrics",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = inf_grpc.InferenceServiceStub(channel)
        request = inf.PredictRequest(target=inf.Target(model_id=pushed.model.id), payload=b'"hi"')
        for _ in range(5):
            await stub.Predict(request, timeout=10)
        quiet = await _top(*urls)
        row = _row(quiet, deployment_id)
        assert row[1:5] == [pushed.model.id, "production", "1/1", "0"], quiet
        assert row[5:] == ["0.0", "-", "-", "0.0", "5"], quiet

        async def traffic() -> None:
            while True:
                await stub.Predict(request, timeout=10)

        running = asyncio.create_task(traffic())
        try:
            busy = await _top(*urls)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    row = _row(busy, deployment_id)
    assert float(row[5]) > 0 and float(row[6]) > 0 and float(row[7]) >= float(row[6]) and row[8] == "0.0", busy


async def _top(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "slipway",
        "--api-key",
        "",
        "top",
        "--once",
        "--interval",
        "1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SLIPWAY_API_KEY": ""},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


def _row(frame: str, deployment_id: str) -> list[str]:
    lines = frame.splitlines()
    assert lines[0].split()[:3] == ["DEPLOYMENT", "MODEL", "ENV"], frame
    (line,) = [line for line in lines if line.startswith(deployment_id)]
    return line.split()
