"""Python CPU per fast-path request the native data plane records (gateway/native/access_log.py):
HAProxy's log line received from its ring over a unix stream socket, parsed and recorded through the
gateway's Observation path (Prometheus series and the deployment's load). Prints figures;
asserts nothing.

    .venv/bin/python -m bench.native_log [--lines 200000]   (a module: bench/gateway.py shadows the package)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time
from collections import defaultdict

from gateway.forwarder import LoadMeter
from gateway.metrics import GatewayMetrics
from gateway.native.access_log import AccessLog
from gateway.routing import RouteIndex
from slipway.v1 import route_service_pb2 as rt

T0 = 1_700_000_000_000_000


async def run(lines: int) -> None:
    index = RouteIndex()
    models = [rt.ModelRoute(model_id=f"m{i}", model_name=f"n{i}", production_deployment_id=f"d{i}") for i in range(8)]
    deployments = [rt.DeploymentRoute(deployment_id=f"d{i}", model_id=f"m{i}") for i in range(8)]
    index.apply(rt.WatchRoutesResponse(reset=True, models=models, deployments=deployments))
    metrics = GatewayMetrics(lambda: index)
    loads: defaultdict[str, LoadMeter] = defaultdict(LoadMeter)
    metrics.count_answers(lambda d, cls, seconds: loads[d].answer(cls, seconds))
    owner = {f"d{i}": i for i in range(8)}
    samples = [
        f"{kind}{i} 200 - - -- 120 {T0} {T0 + 900} {T0 + 1200 + 37 * i}".encode() for i in range(8) for kind in "gh"
    ]
    with tempfile.TemporaryDirectory() as run_dir:
        path = os.path.join(run_dir, "admin.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        log = AccessLog(metrics, lambda: index, lambda: owner)
        log.connect(path)
        haproxy, _ = listener.accept()
        haproxy.recv(100)
        # Lines as the ring streams them, 256 per read.
        batch = b"".join(samples[i % len(samples)] + b"\n" for i in range(256))
        cpu = 0.0
        done = 0
        while done < lines:
            haproxy.sendall(batch)
            started = time.process_time()
            log.drain()
            cpu += time.process_time() - started
            done += 256
        log.close()
        haproxy.close()
    assert log.recorded == done and log.malformed == 0
    print(f"lines recorded: {done}, sent 256 at a time")
    print(f"Python CPU per logged request (recv + parse + record): {cpu / done * 1e6:.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    asyncio.run(run(parser.parse_args().lines))


if __name__ == "__main__":
    main()
