"""Controller address lists on the client side: which calls move to the next controller.

Two real gRPC servers on loopback stand for controllers: one answers every call
UNAVAILABLE after receiving it (a controller going away under a call), the other
answers. A third address refuses connections (nothing listens on it)."""

from __future__ import annotations

import socket
import threading
from concurrent import futures

import grpc
import pytest

from slipway.addresses import AddressListError, parse_addresses
from slipway.client import SlipwayClient
from slipway.failover import FailoverChannel, retry_is_safe
from slipway.v1 import model_service_pb2 as ms


class CountingServer:
    """Answers ModelService.GetModel / DeleteModel, or UNAVAILABLE when `down`; counts calls."""

    def __init__(self, down: bool) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        responses = {"GetModel": ms.GetModelResponse, "DeleteModel": ms.DeleteModelResponse}

        def handler(name: str, request_type):
            def handle(request, context):
                with self._lock:
                    self.calls.append(name)
                if down:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
                response = responses[name]()
                response.model.id = f"answered-{name}"
                return response

            return grpc.unary_unary_rpc_method_handler(
                handle,
                request_deserializer=request_type.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "slipway.v1.ModelService",
                    {
                        "GetModel": handler("GetModel", ms.GetModelRequest),
                        "DeleteModel": handler("DeleteModel", ms.DeleteModelRequest),
                    },
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def refusing_address():
    """A port bound by nobody that listens: connections to it are refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"


@pytest.mark.parametrize("api_key", ["", "sk-test"])  # with a key, calls go through an interceptor (with_call)
def test_calls_skip_an_unreachable_controller_and_retry_a_lost_call_only_when_safe(refusing_address, api_key):
    going, good = CountingServer(down=True), CountingServer(down=False)
    try:
        # Nothing reaches a controller that refuses connections: any call moves on.
        with SlipwayClient(f"{refusing_address},{good.address}", api_key=api_key) as client:
            assert client.delete_model("m").id == "answered-DeleteModel"
            assert good.calls == ["DeleteModel"]

        with SlipwayClient(f"{going.address},{good.address}", api_key=api_key) as client:
            # A read that reached a controller which went away under it is read from the next.
            assert client.get_model("m").id == "answered-GetModel"
            assert going.calls == ["GetModel"] and good.calls[-1] == "GetModel"
            assert isinstance(client._channel, FailoverChannel) and client._channel.address == good.address

        with SlipwayClient(f"{going.address},{good.address}", api_key=api_key) as client:
            # A mutation without a request_id may have been applied: not sent again.
            good.calls.clear()
            with pytest.raises(grpc.RpcError) as lost:
                client.delete_model("m")
            assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
            assert good.calls == []
            # With one, the shared database applies it once: the next controller gets it.
            assert client.delete_model("m", request_id="r-1").id == "answered-DeleteModel"
            assert good.calls == ["DeleteModel"]
    finally:
        going.server.stop(0)
        good.server.stop(0)


def test_with_every_controller_unreachable_the_error_is_grpcs_own(refusing_address):
    with SlipwayClient(f"{refusing_address},{refusing_address}", api_key="") as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.get_model("m")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_retry_policy():
    assert retry_is_safe("/slipway.v1.DeploymentService/GetDeployment", ms.GetModelRequest())
    assert retry_is_safe("/slipway.v1.ModelService/ListModels", ms.ListModelsRequest())
    assert not retry_is_safe("/slipway.v1.ModelService/DeleteModel", ms.DeleteModelRequest(model_id="m"))
    assert retry_is_safe("/slipway.v1.ModelService/DeleteModel", ms.DeleteModelRequest(request_id="r"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no controller address"),
        ("a:1,", "'' is not HOST:PORT"),
        ("a", "'a' is not HOST:PORT"),
        ("a:0", "'a:0' is not HOST:PORT"),
        ("a:99999", "is not HOST:PORT"),
        (",".join(["a:1"] * 17), "at most 16"),
    ],
)
def test_address_lists_are_checked(value, message):
    with pytest.raises(AddressListError, match=message):
        parse_addresses(value)


def test_address_lists_parse():
    assert parse_addresses("a:1, b:2") == ("a:1", "b:2")
    assert parse_addresses("unix:/run/slipway.sock") == ("unix:/run/slipway.sock",)
    assert parse_addresses(["[::1]:7100"]) == ("[::1]:7100",)
