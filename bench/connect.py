"""What the Connect (JSON over HTTP) surface costs over a direct gRPC call: sequential
GetModel and ListDeployments latencies through both, against an in-process controller.

    .venv/bin/python bench/connect.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import tempfile
import time

import aiohttp
import grpc

from controller.server import Controller, ControllerSettings
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2 as ms
from slipway.v1 import model_service_pb2_grpc as ms_grpc


def summary(name: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99) - 1]
    return f"{name:<34} p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms  mean {statistics.mean(seconds) * 1e3:6.2f} ms"


async def timed(calls: int, once) -> list[float]:
    result = []
    for _ in range(calls):
        start = time.perf_counter()
        await once()
        result.append(time.perf_counter() - start)
    return result


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = ControllerSettings(data_dir=pathlib.Path(tmp), port=0, http_port=0)
        controller = await Controller.start(settings)
        try:
            async with grpc.aio.insecure_channel(controller.address) as channel, aiohttp.ClientSession() as http:
                models, deployments = ms_grpc.ModelServiceStub(channel), ds_grpc.DeploymentServiceStub(channel)

                async def connect(method: str, body: dict) -> None:
                    url = f"{controller.http_url}/slipway.v1.{method}"
                    async with http.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r:
                        await r.read()

                async def grpc_get_model() -> None:
                    try:
                        await models.GetModel(ms.GetModelRequest(model_id="missing"))
                    except grpc.aio.AioRpcError:
                        pass

                runs = {
                    "gRPC GetModel (NOT_FOUND)": grpc_get_model,
                    "Connect GetModel (404)": lambda: connect("ModelService/GetModel", {"modelId": "missing"}),
                    "gRPC ListDeployments": lambda: deployments.ListDeployments(ds.ListDeploymentsRequest()),
                    "Connect ListDeployments": lambda: connect("DeploymentService/ListDeployments", {}),
                }
                for name, once in runs.items():
                    await timed(20, once)  # warm-up
                    print(summary(name, await timed(calls, once)))
        finally:
            await controller.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    asyncio.run(main(parser.parse_args().calls))
