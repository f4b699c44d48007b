"""Malformed requests get INVALID_ARGUMENT with a precise reason, and a refused push
stores nothing: names matched whole, bounded IDs, values echoed short, undecodable
requests refused (not UNKNOWN), on every controller service and the gateway."""

from __future__ import annotations

import os

import grpc
import pytest
from conftest import Api, error_reason
from test_lifecycle import refused, update_request

from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2 as ms

INVALID = grpc.StatusCode.INVALID_ARGUMENT
LONG_ID = "d" * 8000
# Field 1 (a string) holding bytes that are not UTF-8.
INVALID_UTF8_FIELD = b"\x0a\x02\xff\xfe"


def stored_packages(controller) -> list[str]:
    return sorted(os.listdir(controller.settings.data_dir / "packages"))


# --- a refused push stores nothing ------------------------------------------------------


async def test_refused_pushes_leave_no_files_behind(api: Api, controller):
    published = ds.PUSH_TARGET_PUBLISHED
    await refused(api.push(api.package("a/b")), INVALID, "INVALID_MODEL_NAME")
    await refused(api.push(api.package("m"), target=published, name="development"), INVALID, "RESERVED_DEPLOYMENT_NAME")
    await refused(
        api.push(api.package("m", extra_config="system_packages: [git]\n")), INVALID, "UNSUPPORTED_PACKAGE_CONFIG"
    )
    assert stored_packages(controller) == []
    first = await api.push(api.package("m", tag="v1"), target=published, name="v1")
    kept = stored_packages(controller)
    # Refused inside the transaction, after the package was checked.
    await refused(
        api.push(api.package("m", tag="v2"), target=published, name="v1"),
        grpc.StatusCode.ALREADY_EXISTS,
        "DEPLOYMENT_NAME_TAKEN",
    )
    assert (
        stored_packages(controller)
        == kept
        == sorted([first.deployment.package_digest, f"{first.deployment.package_digest}.tar.gz"])
    )


# --- names are matched whole ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["development\n", "v1\n", "v1\nv2"])
async def test_deployment_names_with_a_newline_are_refused(api: Api, name: str):
    await refused(
        api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED, name=name), INVALID, "INVALID_DEPLOYMENT_NAME"
    )
    published = await api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED)
    await refused(
        api.deployments.UpdateDeployment(update_request(published.deployment.id, "name", name=name)),
        INVALID,
        "INVALID_DEPLOYMENT_NAME",
    )
    assert (await api.get(published.deployment.id)).name == published.deployment.name


# --- bounded IDs, short echoes --------------------------------------------------------------


async def test_long_or_malformed_ids_are_invalid_arguments(api: Api):
    for bad in (LONG_ID, "d\nx"):
        error = await refused(api.get(bad), INVALID, "INVALID_ID")
        assert len(error.details()) < 300
        await refused(api.model(bad), INVALID, "INVALID_ID")
        await refused(api.deployments.ListDeployments(ds.ListDeploymentsRequest(model_id=bad)), INVALID, "INVALID_ID")
        await refused(
            api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=bad)), INVALID, "INVALID_ID"
        )
    await refused(api.get("d_unknown"), grpc.StatusCode.NOT_FOUND, "DEPLOYMENT_NOT_FOUND")


async def test_long_values_echoed_in_errors_are_shortened(api: Api):
    """A refusal that echoes what the caller sent stays within gRPC's metadata limit."""
    long_name = "n" * 20_000
    await refused(
        api.push(api.package("m"), target=ds.PUSH_TARGET_PUBLISHED, name=long_name), INVALID, "INVALID_DEPLOYMENT_NAME"
    )
    request_id = "r" * 20_000
    await api.push(api.package("m"), request_id=request_id)
    error = await refused(
        api.models.DeleteModel(ms.DeleteModelRequest(model_id="m", request_id=request_id)), INVALID, "REQUEST_ID_REUSED"
    )
    assert len(error.details()) <= 2100


# --- undecodable requests ------------------------------------------------------------------


async def raw_call(channel: grpc.aio.Channel, method: str, body: bytes, streaming: bool = False):
    if streaming:
        call = channel.unary_stream(method)(body, timeout=10)
        return [message async for message in call]
    return await channel.unary_unary(method)(body, timeout=10)


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        ("/slipway.v1.DeploymentService/GetDeployment", False),
        ("/slipway.v1.ModelService/GetModel", False),
        ("/slipway.v1.DeploymentService/WatchDeployments", True),
    ],
)
async def test_invalid_utf8_in_a_controller_request_is_an_invalid_argument(api: Api, method: str, streaming: bool):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_call(api.channel, method, INVALID_UTF8_FIELD, streaming)
    assert caught.value.code() == INVALID, caught.value.details()
    assert error_reason(caught.value) == "MALFORMED_REQUEST"


async def test_gateway_refuses_undecodable_and_long_targets_precisely(gateway):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        target = b"\x0a" + bytes([len(INVALID_UTF8_FIELD)]) + INVALID_UTF8_FIELD
        for method, streaming in (("Predict", False), ("PredictStream", True)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw_call(channel, f"/slipway.v1.InferenceService/{method}", target, streaming)
            assert caught.value.code() == INVALID, caught.value.details()
            assert error_reason(caught.value) == "MALFORMED_REQUEST"
        stub = inf_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(inf.PredictRequest(target=inf.Target(model_id="m" * 20_000), payload=b"{}"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
