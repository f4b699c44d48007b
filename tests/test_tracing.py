"""Traces (slipway/tracing.py): a caller's W3C trace context is continued by the gateway
and passed on to the replica, whose spans join the same trace; off by default."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import urllib.request

import aiohttp
import grpc
import pytest
from conftest import Api, controller_settings, start_gateway, stop_or_explain, wait_until, write_package
from otlp_collector import Collector
from test_restart import free_port

from controller.server import Controller
from slipway import tracing
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Exporters batch for 5 s by default: the replica processes of these tests send sooner.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
PREPROCESSING_MODEL = """
class Model:
    def __init__(self, **kwargs):
        pass

    def preprocess(self, model_input):
        return {"pre": model_input}

    def predict(self, model_input):
        return model_input

    def postprocess(self, model_output):
        return {"post": model_output}
"""
REPLICA_SPANS = {"slipway.v1.ReplicaService/InvokeStream", "preprocess", "queue wait", "predict", "postprocess"}


def caller_context() -> tuple[str, str, str]:
    """A caller's trace: its trace ID, span ID, and the traceparent header naming them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def by_name(spans) -> dict:
    return {span.name: span for span in spans}


async def test_a_traced_request_is_one_trace_from_caller_to_replica(tmp_path, monkeypatch):
    """In-process gateway into the SDK's in-memory exporter; real replica processes export
    to a collector; both halves carry the caller's trace ID and link parent to child."""
    for name, value in FAST_EXPORT.items():
        monkeypatch.setenv(name, value)
    with Collector() as collector:
        controller = await Controller.start(controller_settings(tmp_path / "data", otlp_endpoint=collector.endpoint))
        try:
            with tracing.collecting("slipway-gateway") as exported:
                gateway = await start_gateway(controller)
                try:
                    await _traced_calls(controller, gateway, collector, exported, tmp_path)
                finally:
                    await stop_or_explain(gateway.stop(), "gateway")
        finally:
            await stop_or_explain(controller.stop(), "controller")


async def _traced_calls(controller, gateway, collector, exported, tmp_path) -> None:
    async with grpc.aio.insecure_channel(controller.address) as channel:
        api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
        pushed = await api.push(
            write_package(tmp_path / "pkg", "traced", PREPROCESSING_MODEL), ds.PUSH_TARGET_PRODUCTION
        )
        await api.wait_production(pushed.model.id, pushed.deployment.id)
        model_id, deployment_id = pushed.model.id, pushed.deployment.id

        # HTTP: the traceparent header.
        trace_id, caller_span, traceparent = caller_context()
        async with aiohttp.ClientSession() as session:

            async def answered():
                async with session.post(
                    f"http://127.0.0.1:{gateway.http_port}/model/{model_id}/production/predict",
                    data=b'{"x": 1}',
                    headers={"Content-Type": "application/json", "traceparent": traceparent},
                ) as response:
                    return await response.json() if response.status == 200 else None

            assert await wait_until(answered, 30, "the gateway to serve the model") == {"post": {"pre": {"x": 1}}}

        gateway_spans = [s for s in exported.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
        named = {s.name: s for s in gateway_spans}
        server = named["POST /model/{model_id}/{environment}/predict"]
        assert f"{server.parent.span_id:016x}" == caller_span
        assert server.attributes[tracing.MODEL_ID] == model_id
        forward = named["forward"]
        assert forward.parent.span_id == server.context.span_id
        assert named["route resolution"].parent.span_id == server.context.span_id
        assert named["route resolution"].attributes[tracing.DEPLOYMENT_ID] == deployment_id
        assert forward.attributes[tracing.DEPLOYMENT_ID] == deployment_id
        assert forward.attributes[tracing.MODEL_ID] == model_id
        replica_id = forward.attributes[tracing.REPLICA_ID]
        assert replica_id

        async def replica_spans():
            spans = collector.spans(trace_id)
            return spans if REPLICA_SPANS <= {s.name for s in spans} else None

        spans = by_name(await wait_until(replica_spans, 30, "the replica's spans"))
        invoke = spans["slipway.v1.ReplicaService/InvokeStream"]
        assert invoke.service == "slipway-replica"
        assert invoke.parent_id == f"{forward.context.span_id:016x}"
        for name in ("preprocess", "queue wait", "predict", "postprocess"):
            assert spans[name].parent_id == invoke.span_id, name
            assert spans[name].attributes[tracing.DEPLOYMENT_ID] == deployment_id
            assert spans[name].attributes[tracing.MODEL_ID] == model_id
            assert spans[name].attributes[tracing.REPLICA_ID] == replica_id
        assert invoke.resource["slipway.model_name"] == "traced"

        # gRPC: the traceparent metadata key, through Predict to the replica's unary Invoke.
        trace_id, caller_span, traceparent = caller_context()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as gateway_channel:
            answer = await inf_grpc.InferenceServiceStub(gateway_channel).Predict(
                inf.PredictRequest(target=inf.Target(model_id=model_id), payload=b'"y"'),
                metadata=(("traceparent", traceparent),),
                timeout=20,
            )
        assert answer.payload == b'{"post":{"pre":"y"}}'
        named = {s.name: s for s in exported.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id}
        server = named["slipway.v1.InferenceService/Predict"]
        assert f"{server.parent.span_id:016x}" == caller_span
        forward = named["forward"]

        async def invoke_span():
            return by_name(collector.spans(trace_id)).get("slipway.v1.ReplicaService/Invoke")

        invoke = await wait_until(invoke_span, 30, "the replica's Invoke span")
        assert invoke.parent_id == f"{forward.context.span_id:016x}"


async def test_without_a_caller_trace_the_gateway_starts_one(controller, api, tmp_path):
    """No traceparent: a new trace begins at the gateway (a root span)."""
    with tracing.collecting("slipway-gateway") as exported:
        gateway = await start_gateway(controller)
        try:
            pushed = await api.push(api.package("untraced"), ds.PUSH_TARGET_PRODUCTION)
            await api.wait_production(pushed.model.id, pushed.deployment.id)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
                stub = inf_grpc.InferenceServiceStub(channel)
                request = inf.PredictRequest(target=inf.Target(model_id=pushed.model.id), payload=b'"z"')
                await stub.Predict(request, timeout=20)
                # A caller that did not sample its trace: nothing is recorded for it.
                unsampled, _, traceparent = caller_context()
                await stub.Predict(request, timeout=20, metadata=(("traceparent", traceparent[:-2] + "00"),))
        finally:
            await stop_or_explain(gateway.stop(), "gateway")
        server = next(s for s in exported.get_finished_spans() if s.name == "slipway.v1.InferenceService/Predict")
        assert server.parent is None
        forward = next(s for s in exported.get_finished_spans() if s.name == "forward")
        assert forward.context.trace_id == server.context.trace_id
        assert len(exported.get_finished_spans()) == 3  # server, route resolution, forward: the sampled call's
        assert all(f"{s.context.trace_id:032x}" != unsampled for s in exported.get_finished_spans())


async def test_a_request_that_wakes_a_deployment_has_a_wake_wait_span(tmp_path):
    from test_autoscaling import Platform

    from controller.autoscaler import AutoscalerConfig
    from slipway.v1 import resources_pb2 as r

    settings = controller_settings(tmp_path / "data", autoscaler=AutoscalerConfig(time_scale=0.01, wake_hold_seconds=0))
    controller = await Controller.start(settings)
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            pushed = await api.push(api.package("sleepy"), target=ds.PUSH_TARGET_PRODUCTION)
            await api.wait_production(pushed.model.id, pushed.deployment.id)
            await Platform(api, None, None, tmp_path).autoscale(pushed.deployment.id, scale_down_delay=0)
            await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_SCALED_TO_ZERO)
            with tracing.collecting("slipway-gateway") as exported:
                gateway = await start_gateway(controller)
                try:
                    trace_id, _, traceparent = caller_context()
                    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as gateway_channel:
                        await inf_grpc.InferenceServiceStub(gateway_channel).Predict(
                            inf.PredictRequest(target=inf.Target(model_id=pushed.model.id), payload=b'"wake"'),
                            metadata=(("traceparent", traceparent),),
                            timeout=30,
                        )
                finally:
                    await stop_or_explain(gateway.stop(), "gateway")
                spans = {s.name: s for s in exported.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id}
    finally:
        await stop_or_explain(controller.stop(), "controller")
    server, waited = spans["slipway.v1.InferenceService/Predict"], spans["wake wait"]
    assert waited.parent.span_id == server.context.span_id
    assert waited.attributes[tracing.DEPLOYMENT_ID] == pushed.deployment.id
    assert waited.end_time <= spans["forward"].start_time


def test_off_by_default_the_hooks_make_no_spans():
    assert not tracing.enabled()
    assert tracing.span("a") is tracing.span("b") is tracing.client_span("c")
    assert tracing.server_span("d", {"traceparent": caller_context()[2]}) is tracing.span("a")
    metadata = (("x-slipway-replica-token", "t"),)
    assert tracing.outgoing(metadata) is metadata
    with tracing.span("nothing") as made:
        assert made is None


async def test_a_gateway_without_an_endpoint_leaves_tracing_off(controller):
    gateway = await start_gateway(controller)
    try:
        assert not tracing.enabled()
    finally:
        await stop_or_explain(gateway.stop(), "gateway")


def test_an_endpoint_that_is_not_a_url_is_refused():
    refused = subprocess.run(
        [sys.executable, "-m", "slipway", "gateway", "--otlp-endpoint", "collector:4317"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "is not http://HOST:PORT or https://HOST:PORT (--otlp-endpoint / SLIPWAY_OTLP_ENDPOINT)" in refused.stderr


def test_slipway_up_exports_gateway_and_replica_spans_of_one_trace(tmp_path):
    """The real processes: `slipway up` (controller and gateway) and its replica process
    export to a collector; a caller's traceparent makes one trace of both."""
    ports = [free_port() for _ in range(3)]
    with Collector() as collector:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway",
                "up",
                "--example",
                os.path.join(ROOT, "examples", "echo"),
                "--data-dir",
                str(tmp_path / "data"),
                "--port",
                str(ports[0]),
                "--gateway-port",
                str(ports[1]),
                "--http-port",
                str(ports[2]),
                "--insecure-no-auth",
            ],
            env={**os.environ, **FAST_EXPORT, "SLIPWAY_OTLP_ENDPOINT": collector.endpoint},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert process.stdout is not None
            lines = []
            for line in process.stdout:
                lines.append(line)
                if line.startswith("Serving"):
                    break
            assert "Deployment development is ACTIVE." in "".join(lines), "".join(lines)
            url = next(line for line in lines if "curl -X POST" in line).split("curl -X POST ")[1].split(" ")[0]
            trace_id, caller_span, traceparent = caller_context()
            request = urllib.request.Request(
                url,
                data=b'{"text": "traced"}',
                headers={"Content-Type": "application/json", "traceparent": traceparent},
            )
            with urllib.request.urlopen(request, timeout=20) as response:
                assert response.status == 200
            spans = by_name(
                collector.wait_for(trace_id, {"forward", "slipway.v1.ReplicaService/InvokeStream", "predict"})
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    server = next(s for s in spans.values() if s.kind == 2 and s.service == "slipway-gateway")  # SERVER
    assert server.parent_id == caller_span
    assert spans["forward"].service == "slipway-gateway"
    assert spans["forward"].parent_id == server.span_id
    invoke = spans["slipway.v1.ReplicaService/InvokeStream"]
    assert invoke.service == "slipway-replica"
    assert invoke.parent_id == spans["forward"].span_id
    assert spans["predict"].parent_id == invoke.span_id
    assert spans["predict"].attributes[tracing.DEPLOYMENT_ID] == spans["forward"].attributes[tracing.DEPLOYMENT_ID]


@pytest.fixture(autouse=True)
def _tracing_left_off():
    yield
    tracing.shutdown()
