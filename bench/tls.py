"""What TLS costs on the data plane: predict through the gateway, plaintext vs TLS.

    .venv/bin/python bench/tls.py            # about a minute on 2 cores
    .venv/bin/python bench/tls.py --quick    # small counts, a smoke run

Needs the dev extras (`cryptography` generates a throwaway CA and server certificate).
It runs `slipway up` twice as a subprocess on free 127.0.0.1 ports, plaintext and then
with --tls-cert/--tls-key, pushes examples/echo as the development deployment and, from
this process, measures:

1. gRPC Predict over one persistent channel, `--concurrency` calls in flight;
2. HTTP POST .../development/predict over one keep-alive aiohttp session, the same;
3. HTTP with a new connection per request (so each TLS request pays a full handshake).

The client is Python too and shares the two cores with gateway, replica and controller,
so the figures compare the two runs; they are not the gateway's ceiling. It prints
figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

REPO = pathlib.Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import aiohttp  # noqa: E402
from pki import generate  # noqa: E402

from bench.common import free_port, machine_info  # noqa: E402
from slipway.channels import secure_or_insecure_aio_channel  # noqa: E402
from slipway.client import SlipwayClient  # noqa: E402
from slipway.tls import read_ca  # noqa: E402
from slipway.v1 import inference_service_pb2 as inf  # noqa: E402
from slipway.v1 import inference_service_pb2_grpc as inf_grpc  # noqa: E402

PAYLOAD = b'{"text": "hello"}'
JSON = {"content-type": "application/json"}


async def start_platform(work: pathlib.Path, tls_flags: list[str]) -> tuple[asyncio.subprocess.Process, list[str]]:
    ports = [str(free_port()) for _ in range(3)]
    up = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "slipway", "up", "--port", ports[0], "--gateway-port", ports[1]),
        *("--http-port", ports[2], "--data-dir", str(work / "data"), "--log-level", "WARNING", *tls_flags),
        # What TLS costs; bench/auth.py measures what key checking costs.
        "--insecure-no-auth",
        *("--example", str(REPO / "examples" / "echo")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert up.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Serving"):
        line = await asyncio.wait_for(up.stdout.readline(), 300)
        if not line:
            raise RuntimeError(f"slipway up exited: {lines}")
        lines.append(line.decode().strip())
    return up, lines


async def timed(call: Callable[[], Awaitable[object]], count: int, concurrency: int) -> tuple[float, list[float]]:
    """Requests per second and per-request latencies of `count` calls, `concurrency` at a time."""
    latencies: list[float] = []
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start), sorted(latencies)


def line(label: str, rate: float, latencies: list[float]) -> str:
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    return f"| {label} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |"


async def measure(label: str, work: pathlib.Path, tls_flags: list[str], ca: pathlib.Path | None, args) -> list[str]:
    up, lines = await start_platform(work, tls_flags)
    try:
        controller = next(text.split("=", 1)[1] for text in lines if "SLIPWAY_CONTROLLER=" in text)
        gateway = next(text.split("=", 1)[1] for text in lines if "SLIPWAY_GATEWAY=" in text)
        with SlipwayClient(controller, ca_file=ca) as client:
            model_id = client.get_model("echo").id
        http_port = lines[1].rsplit(":", 1)[1].split()[0]
        scheme = "https" if ca else "http"
        url = f"{scheme}://127.0.0.1:{http_port}/model/{model_id}/development/predict"
        context = ssl.create_default_context(cafile=ca) if ca else None
        rows = []
        async with secure_or_insecure_aio_channel(gateway, None if ca is None else read_ca(ca)) as channel:
            stub = inf_grpc.InferenceServiceStub(channel)
            request = inf.PredictRequest(
                target=inf.Target(model_id=model_id, environment=inf.ENVIRONMENT_DEVELOPMENT),
                payload=PAYLOAD,
                content_type="application/json",
            )
            await timed(lambda: stub.Predict(request, timeout=30), args.warmup, args.concurrency)
            rows.append(
                line(
                    f"{label}: gRPC, one channel",
                    *await timed(lambda: stub.Predict(request, timeout=30), args.count, args.concurrency),
                )
            )

        async with aiohttp.ClientSession() as session:

            async def post() -> None:
                async with session.post(url, data=PAYLOAD, headers=JSON, ssl=context) as response:
                    assert response.status == 200, await response.text()
                    await response.read()

            await timed(post, args.warmup, args.concurrency)
            rows.append(line(f"{label}: HTTP, keep-alive", *await timed(post, args.count, args.concurrency)))

        async def post_on_a_new_connection() -> None:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                async with fresh.post(url, data=PAYLOAD, headers=JSON, ssl=context) as response:
                    assert response.status == 200, await response.text()
                    await response.read()

        rows.append(
            line(f"{label}: HTTP, new connection each", *await timed(post_on_a_new_connection, args.count // 4, 1))
        )
        return rows
    finally:
        with contextlib.suppress(ProcessLookupError):
            up.send_signal(signal.SIGTERM)
        await asyncio.wait_for(up.wait(), 60)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="slipway-bench-tls-") as tmp:
        work = pathlib.Path(tmp)
        pki = generate(work)
        rows = await measure("plaintext", work / "plain", [], None, args)
        tls_flags = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
        rows += await measure("TLS", work / "tls", tls_flags, pki.ca, args)
    print("\n".join(machine_info()))
    print(
        f"- {args.count} requests per row ({args.count // 4} for new connections, one at a time), "
        f"concurrency {args.concurrency}, after {args.warmup} warm-up requests\n"
    )
    print("| path | req/s | p50 ms | p99 ms |\n|---|---|---|---|")
    print("\n".join(rows))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="200 requests per row")
    args = parser.parse_args()
    if args.quick:
        args.count, args.warmup = 200, 20
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
