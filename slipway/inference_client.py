"""Calling models through a gateway's InferenceService, synchronously. Every call also
names its target in metadata (slipway/data_plane.py), which a native data plane routes by.

from slipway.inference_client import InferenceClient

client = InferenceClient()                  # SLIPWAY_GATEWAY or 127.0.0.1:7200
print(client.predict("my-model", {"prompt": "hi"}))                 # production
print(client.predict("my-model", '"hi"', environment="staging"))    # a named environment
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from slipway.channels import secure_or_insecure_channel
from slipway.client import CHANNEL_OPTIONS, DEFAULT_GATEWAY, JSON, client_ca, error_reason, payload_bytes
from slipway.credentials import find_api_key, with_api_key
from slipway.data_plane import routing_metadata
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc


def default_gateway_address() -> str:
    return os.environ.get("SLIPWAY_GATEWAY") or DEFAULT_GATEWAY


def inference_target(target: str, deployment: str = "", environment: str = "") -> inf.Target:
    """`target` is a model ID or name (production), or a deployment ID on its own.

    `deployment` picks a deployment of the model: an ID, or `development`; `environment` one of
    its environments by name (`staging`).
    """
    if environment:
        return inf.Target(model_id=target, environment_name=environment)
    if deployment == "development":
        return inf.Target(model_id=target, environment=inf.ENVIRONMENT_DEVELOPMENT)
    if deployment:
        return inf.Target(model_id=target, deployment_id=deployment)
    return inf.Target(model_id=target)


def call_with_fallback(
    call: Callable[[inf.Target], Any], target: str, deployment: str = "", environment: str = ""
) -> Any:
    """`call` on the target `inference_target` names; a bare target that is not a model is
    tried again as a deployment ID."""
    try:
        return call(inference_target(target, deployment, environment))
    except grpc.RpcError as err:
        if deployment or environment or error_reason(err) != "MODEL_NOT_FOUND":
            raise
        return call(inf.Target(deployment_id=target))


class InferenceClient:
    """Calls models through a gateway's InferenceService (`api_key` as for SlipwayClient)."""

    def __init__(
        self, address: str | None = None, *, ca_file: str | os.PathLike[str] | None = None, api_key: str | None = None
    ) -> None:
        self.address = address or default_gateway_address()
        self._channel = secure_or_insecure_channel(self.address, client_ca(ca_file), CHANNEL_OPTIONS)
        self._stub = inf_grpc.InferenceServiceStub(with_api_key(self._channel, find_api_key(api_key)))

    def close(self) -> None:
        self._channel.close()

    def predict(
        self,
        target: str,
        payload: bytes | str,
        deployment: str = "",
        timeout: float | None = None,
        environment: str = "",
    ) -> bytes:
        def call(t: inf.Target) -> bytes:
            request = inf.PredictRequest(target=t, payload=payload_bytes(payload), content_type=JSON)
            return self._stub.Predict(request, timeout=timeout, metadata=routing_metadata(t)).payload

        return call_with_fallback(call, target, deployment, environment)

    def predict_stream(
        self,
        target: str,
        payload: bytes | str,
        deployment: str = "",
        timeout: float | None = None,
        environment: str = "",
    ) -> Iterator[bytes]:
        def call(t: inf.Target) -> list[bytes] | Iterator[bytes]:
            request = inf.PredictStreamRequest(target=t, payload=payload_bytes(payload), content_type=JSON)
            responses = self._stub.PredictStream(request, timeout=timeout, metadata=routing_metadata(t))
            first = next(responses, None)  # surfaces a routing error here, where the fallback can see it
            return iter(()) if first is None else _chain(first.chunk, (r.chunk for r in responses))

        return call_with_fallback(call, target, deployment, environment)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
