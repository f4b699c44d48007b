"""The SDK names each Predict call's target in metadata (slipway/data_plane.py), which a
native data plane routes by: checked on a real gRPC server that records what arrives."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from slipway.data_plane import DEPLOYMENT_HEADER, ENVIRONMENT_HEADER, MODEL_HEADER, routing_metadata
from slipway.inference_client import InferenceClient
from slipway.v1 import inference_service_pb2 as inf

SERVICE = "slipway.v1.InferenceService"


@pytest.fixture
def recorder():
    """An InferenceService that answers every call and records its routing metadata."""
    seen: list[dict[str, str]] = []

    def record(context: grpc.ServicerContext) -> None:
        names = (MODEL_HEADER, ENVIRONMENT_HEADER, DEPLOYMENT_HEADER)
        seen.append({k: v for k, v in context.invocation_metadata() if k in names})

    def predict(request: inf.PredictRequest, context: grpc.ServicerContext) -> inf.PredictResponse:
        record(context)
        return inf.PredictResponse(payload=b'"ok"')

    def predict_stream(request: inf.PredictStreamRequest, context: grpc.ServicerContext):
        record(context)
        yield inf.PredictStreamResponse(chunk=b"ok")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers = {
        "Predict": grpc.unary_unary_rpc_method_handler(
            predict, inf.PredictRequest.FromString, inf.PredictResponse.SerializeToString
        ),
        "PredictStream": grpc.unary_stream_rpc_method_handler(
            predict_stream, inf.PredictStreamRequest.FromString, inf.PredictStreamResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = InferenceClient(f"127.0.0.1:{port}", api_key="")
    yield client, seen
    client.close()
    server.stop(None)


def test_each_predict_names_its_target_in_metadata(recorder):
    client, seen = recorder
    client.predict("my-model", '"hi"')
    client.predict("my-model", '"hi"', deployment="development")
    client.predict("my-model", '"hi"', environment="staging")
    client.predict("my-model", '"hi"', deployment="d-123")
    assert list(client.predict_stream("my-model", '"hi"', environment="production")) == [b"ok"]
    assert seen == [
        {MODEL_HEADER: "my-model", ENVIRONMENT_HEADER: "production"},
        {MODEL_HEADER: "my-model", ENVIRONMENT_HEADER: "development"},
        {MODEL_HEADER: "my-model", ENVIRONMENT_HEADER: "staging"},
        {MODEL_HEADER: "my-model", DEPLOYMENT_HEADER: "d-123"},
        {MODEL_HEADER: "my-model", ENVIRONMENT_HEADER: "production"},
    ]


def test_a_deployment_alone_is_named_by_its_id():
    assert routing_metadata(inf.Target(deployment_id="d-9")) == ((DEPLOYMENT_HEADER, "d-9"),)
    assert routing_metadata(inf.Target()) == ()
