"""What the gateway's two data planes and the replicas agree on.

`python`: the gateway process forwards every request itself. `native`: a native proxy
(HAProxy) holds the public ports and forwards inference straight to ready replicas; the
Python gateway behind it is the activator (scale from zero, waking) and serves every
request the proxy does not take itself. `auto` picks native wherever the proxy is
installed.

A gRPC Predict names its target inside the message, which a proxy cannot read: the SDK
also sends the target as metadata (the headers below), and the proxy routes by them.
A call without them goes to the Python gateway, as before. A replica answering a
routed call checks that the message's target agrees with itself."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from slipway.status import refuse_undecodable_requests
from slipway.v1 import inference_service_pb2 as inf

INFERENCE_SERVICE = inf.DESCRIPTOR.services_by_name["InferenceService"].full_name

PYTHON = "python"
NATIVE = "native"
AUTO = "auto"
DATA_PLANES = (AUTO, PYTHON, NATIVE)

# gRPC metadata naming a Predict call's target (mirrors inference_service.proto's Target).
MODEL_HEADER = "x-slipway-model"  # model ID or name
ENVIRONMENT_HEADER = "x-slipway-environment"  # production, development, or a named environment
DEPLOYMENT_HEADER = "x-slipway-deployment"  # a deployment ID

# The replica's own HTTP predict route (Endpoint.http_address), which the proxy forwards to.
REPLICA_PREDICT_PATH = "/predict"


def routing_metadata(target: inf.Target) -> tuple[tuple[str, str], ...]:
    """The headers above for a Predict call to `target`, as the gateway resolves it: a
    deployment by its ID; else the model's environment (production unless named)."""
    headers = []
    if target.model_id:
        headers.append((MODEL_HEADER, target.model_id))
    if target.deployment_id:
        headers.append((DEPLOYMENT_HEADER, target.deployment_id))
    elif target.model_id:
        if target.environment_name:
            environment = target.environment_name
        elif target.environment == inf.ENVIRONMENT_DEVELOPMENT:
            environment = "development"
        else:
            environment = "production"
        headers.append((ENVIRONMENT_HEADER, environment))
    return tuple(headers)


def inference_handler(predict: Callable, predict_stream: Callable) -> grpc.GenericRpcHandler:
    """InferenceService's Predict and PredictStream, answered as raw bytes: by the gateway, and
    by a replica for the calls the native proxy forwards to it."""
    return grpc.method_handlers_generic_handler(
        INFERENCE_SERVICE,
        {
            "Predict": refuse_undecodable_requests(
                grpc.unary_unary_rpc_method_handler(
                    predict, request_deserializer=inf.PredictRequest.FromString, response_serializer=bytes
                )
            ),
            "PredictStream": refuse_undecodable_requests(
                grpc.unary_stream_rpc_method_handler(
                    predict_stream, request_deserializer=inf.PredictStreamRequest.FromString, response_serializer=bytes
                )
            ),
        },
    )
