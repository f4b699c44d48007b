"""Shared pieces of the benchmarks: free ports, the platform as real processes, machine info."""

from __future__ import annotations

import os
import pathlib
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_info(versions: str = "") -> list[str]:
    """Markdown list lines: cores and CPU, then Python, OS, grpcio and any `versions` given."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    extra = f"; {versions}" if versions else ""
    return [
        f"- nproc: {len(os.sched_getaffinity(0))} (os.cpu_count {os.cpu_count()}), {cpu}",
        f"- python: {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}; grpcio {grpc.__version__}{extra}",
    ]


def wait_reachable(address: str, process: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                continue
    raise RuntimeError(f"{what} not reachable at {address} after {timeout}s")


@dataclass
class Platform:
    """Controller and gateway as separate processes, as `slipway controller` / `slipway gateway` run them."""

    controller: subprocess.Popen
    gateway: subprocess.Popen
    controller_address: str
    gateway_address: str
    http_base: str

    @classmethod
    def start(cls, work: pathlib.Path, *controller_flags: str) -> Platform:
        ports = [free_port() for _ in range(3)]
        controller_address = f"127.0.0.1:{ports[0]}"
        log = open(work / "platform.log", "ab")
        controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway",
                "controller",
                "--port",
                str(ports[0]),
                "--data-dir",
                str(work / "data"),
                "--log-level",
                "WARNING",
                # What key checking costs is bench/auth.py's figure; these measure the rest.
                "--insecure-no-auth",
                *controller_flags,
            ],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        wait_reachable(controller_address, controller, "controller")
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway",
                "--controller",
                controller_address,
                "gateway",
                "--gateway-port",
                str(ports[1]),
                "--http-port",
                str(ports[2]),
                "--internal-token-file",
                str(work / "data" / "internal.token"),
                "--log-level",
                "WARNING",
                "--insecure-no-auth",
            ],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        gateway_address = f"127.0.0.1:{ports[1]}"
        wait_reachable(gateway_address, gateway, "gateway")
        return cls(controller, gateway, controller_address, gateway_address, f"http://127.0.0.1:{ports[2]}")

    def stop(self) -> None:
        for process in (self.gateway, self.controller):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
