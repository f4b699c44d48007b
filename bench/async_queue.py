"""Async inference figures: accepted requests per second (POST …/async_predict answered 202,
i.e. committed to the queue), how fast the queue drains through one echo replica
(predict_concurrency 8), and the end-to-end time of one trivial async request — accepted →
run → stored → webhook received — p50 and p99, beside a synchronous predict through the
same gateway (the difference is what queueing costs: commit, dispatch pass, result commit,
webhook). Controller and gateway are real processes (SQLite); the webhook receiver runs
here on loopback (allowed by the operator flags). Prints figures; asserts nothing.

    .venv/bin/python bench/async_queue.py [--accept N] [--concurrency C] [--e2e M]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import aiohttp
from aiohttp import web

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import Platform, machine_info, percentile  # noqa: E402


def slipway(controller: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "slipway", "--controller", controller, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode != 0:
        raise RuntimeError(f"slipway {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


async def run(platform: Platform, model_id: str, accept: int, concurrency: int, e2e: int) -> list[str]:
    lines: list[str] = []
    arrived: dict[str, float] = {}
    got = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        arrived[body["request_id"]] = time.perf_counter()
        got.set()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    url = f"{platform.http_base}/model/{model_id}/development/async_predict"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            # Warm up: the replica, the connections.
            for _ in range(20):
                async with session.post(f"{platform.http_base}/model/{model_id}/development/predict", json={}) as r:
                    await r.read()

            ids: list[str] = []

            async def submit(count: int) -> None:
                for _ in range(count):
                    async with session.post(url, json={"model_input": {"text": "hi"}}) as response:
                        assert response.status == 202, await response.text()
                        ids.append((await response.json())["request_id"])

            started = time.perf_counter()
            await asyncio.gather(*(submit(accept // concurrency) for _ in range(concurrency)))
            accepted_in = time.perf_counter() - started

            async def left(status: str) -> int:
                listing = f"{platform.http_base}/model/{model_id}/async_requests?status={status}&page_size=1"
                async with session.get(listing) as response:
                    return len((await response.json())["requests"])

            while await left("QUEUED") or await left("IN_PROGRESS"):
                await asyncio.sleep(0.02)
            drained_in = time.perf_counter() - started
            lines.append(
                f"- accepted: {len(ids)} async requests in {accepted_in:.2f} s = **{len(ids) / accepted_in:.0f}/s** "
                f"({concurrency} HTTP clients, each waiting for its 202)"
            )
            lines.append(
                f"- drained: all {len(ids)} SUCCEEDED {drained_in:.2f} s after the first was sent "
                f"(**{len(ids) / drained_in:.0f} runs/s** through one replica, predict_concurrency 8)"
            )

            sync: list[float] = []
            for _ in range(e2e):
                t0 = time.perf_counter()
                async with session.post(f"{platform.http_base}/model/{model_id}/development/predict", json={}) as r:
                    await r.read()
                sync.append(time.perf_counter() - t0)
            ends: list[float] = []
            for _ in range(e2e):
                got.clear()
                t0 = time.perf_counter()
                async with session.post(url, json={"model_input": {}, "webhook_endpoint": hook_url}) as response:
                    request_id = (await response.json())["request_id"]
                while request_id not in arrived:
                    await asyncio.wait_for(got.wait(), 30)
                    got.clear()
                ends.append(arrived[request_id] - t0)
            ms = 1000
            lines.append(
                f"- end to end (accept → run → stored → webhook received), {e2e} one at a time: "
                f"p50 **{percentile(ends, 0.5) * ms:.1f} ms**, p99 **{percentile(ends, 0.99) * ms:.1f} ms**"
            )
            lines.append(
                f"- synchronous predict through the same gateway: p50 {percentile(sync, 0.5) * ms:.1f} ms, "
                f"p99 {percentile(sync, 0.99) * ms:.1f} ms; queueing adds "
                f"{(percentile(ends, 0.5) - percentile(sync, 0.5)) * ms:.1f} ms at p50"
            )
    finally:
        await runner.cleanup()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accept", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--e2e", type=int, default=100)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="slipway-bench-async-"))
    platform = Platform.start(
        work, "--webhook-allow-private-addresses", "--webhook-allow-http", "--async-max-queued", "1000000"
    )
    try:
        pushed = json.loads(slipway(platform.controller_address, "push", str(REPO / "examples/echo"), "-o", "json"))
        model_id = pushed["model"]["id"]
        slipway(platform.controller_address, "requests", "webhook-secret", "--model", model_id)
        lines = asyncio.run(run(platform, model_id, args.accept, args.concurrency, args.e2e))
    finally:
        platform.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("## Async inference (bench/async_queue.py; SQLite, one echo replica)")
    print("\n".join(machine_info()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
