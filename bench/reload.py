"""Live-reload latency: file write to the first response from the new code.

    .venv/bin/python bench/reload.py             # 20 edits
    .venv/bin/python bench/reload.py --edits 50

Runs the real path end to end: a controller and a gateway in this process (as
tests/conftest.py starts them), a real replica process, and the real `slipway watch`
CLI as a subprocess watching a package directory. For each edit it rewrites
model/model.py with a new version string, then calls the development deployment
through the gateway's HTTP front as fast as it can until the answer carries that
version. The time from just before the write to that answer is the reload latency:
it includes the watcher's debounce, hashing, the PatchDeployment call (the package
derived and stored, the commit), the replica's re-import and load(), and routing.

It prints figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from bench.common import machine_info  # noqa: E402
from controller.keys import KeySettings  # noqa: E402
from controller.server import Controller, ControllerSettings  # noqa: E402
from gateway.server import Gateway, GatewaySettings  # noqa: E402

MODEL = """\
VERSION = {version!r}


class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        return {{"version": VERSION}}
"""
READY_TIMEOUT = 120.0
EDIT_TIMEOUT = 30.0


def write_package(root: pathlib.Path) -> pathlib.Path:
    (root / "model").mkdir(parents=True)
    (root / "config.yaml").write_text("model_name: reload-bench\n")
    (root / "model" / "model.py").write_text(MODEL.format(version="v0"))
    return root


class CliOutput:
    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream

    async def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(self._stream.readline(), max(deadline - time.monotonic(), 0.01))
            if not line:
                raise RuntimeError(f"slipway watch exited before printing {text!r}")
            decoded = line.decode().rstrip()
            print(f"  cli | {decoded}", flush=True)
            if text in decoded:
                return decoded


async def first_answer_with(session: aiohttp.ClientSession, url: str, version: str) -> int:
    """Calls until the answer has `version`; returns how many calls it took."""
    calls = 0
    deadline = time.monotonic() + EDIT_TIMEOUT
    while time.monotonic() < deadline:
        calls += 1
        async with session.post(url, json="hi") as response:
            if response.status == 200 and (await response.json()).get("version") == version:
                return calls
    raise RuntimeError(f"{version} was not served within {EDIT_TIMEOUT}s")


async def run(edits: int) -> None:
    with tempfile.TemporaryDirectory(prefix="slipway-reload-bench-") as tmp:
        tmp_path = pathlib.Path(tmp)
        # Live reload's latency; what key checking costs is bench/auth.py's figure.
        controller = await Controller.start(
            ControllerSettings(
                data_dir=tmp_path / "data",
                port=0,
                http_port=0,
                drain_seconds=5,
                keys=KeySettings(require_api_keys=False),
            )
        )
        gateway = await Gateway.start(
            GatewaySettings(
                controller_address=controller.address,
                internal_token=controller.internal_token,
                grpc_port=0,
                http_port=0,
                require_api_keys=False,
            )
        )
        package = write_package(tmp_path / "package")
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "slipway",
            "--controller",
            controller.address,
            "watch",
            str(package),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            output = CliOutput(cli.stdout)
            await output.wait_for("Watching", READY_TIMEOUT)
            url = f"http://127.0.0.1:{gateway.http_port}/model/reload-bench/development/predict"
            async with aiohttp.ClientSession() as session:
                await first_answer_with(session, url, "v0")
                latencies = await measure(session, url, package, output, edits)
        finally:
            cli.terminate()
            await cli.wait()
            await gateway.stop()
            await controller.stop()
    report(latencies)


async def measure(
    session: aiohttp.ClientSession, url: str, package: pathlib.Path, output: CliOutput, edits: int
) -> list[float]:
    model_file = package / "model" / "model.py"
    latencies = []
    for number in range(1, edits + 1):
        version = f"v{number}"
        started = time.perf_counter()
        model_file.write_text(MODEL.format(version=version))
        calls = await first_answer_with(session, url, version)
        latency = time.perf_counter() - started
        latencies.append(latency)
        print(f"edit {number:>3}: {latency * 1000:7.1f} ms ({calls} calls)", flush=True)
        # One edit at a time: the watcher has printed its line before the next write.
        await output.wait_for("model/model.py changed", EDIT_TIMEOUT)
    return latencies


def report(latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    print()
    print("\n".join(machine_info()))
    print(
        f"reload latency over {len(ms)} edits (file write -> first HTTP response from the new code, via `slipway watch`):"
    )
    print(
        f"  p50 {statistics.median(ms):.1f} ms   max {ms[-1]:.1f} ms   min {ms[0]:.1f} ms   mean {statistics.fmean(ms):.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=20, help="number of edits to time")
    args = parser.parse_args()
    asyncio.run(run(args.edits))


if __name__ == "__main__":
    main()
