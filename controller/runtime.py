"""Replica runtime: starts, watches, drains and stops model-server processes.

`LocalProcessRuntime` is the embedded default: each replica is a child process
running `python -m replica` in its own session. A replica reports its port and
phase in a small state file; readiness is confirmed with a gRPC health check. The
runtime only observes: it updates a ReplicaHandle and calls `on_change`; the
reconciler decides what to do about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.domain import ReplicaPhase

log = logging.getLogger("slipway.runtime")

POLL_SECONDS = 0.01
ADOPTED_POLL_SECONDS = 0.2
LOG_TAIL_BYTES = 2000


@dataclass
class ReplicaHandle:
    id: str
    deployment_id: str
    revision: int
    start_time: float
    pid: int | None = None
    port: int | None = None
    phase: ReplicaPhase = ReplicaPhase.STARTING
    exited: bool = False
    exit_code: int | None = None
    # The model's load error (ExceptionType: message), when the replica reported one.
    load_error: str = ""
    log_path: pathlib.Path | None = None
    ready_time: float | None = None
    exit_time: float | None = None
    adopted: bool = False
    _tasks: list[asyncio.Task] = field(default_factory=list, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.port else ""

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
            return f.read().decode(errors="replace").strip()


class LocalProcessRuntime:
    def __init__(
        self,
        data_dir: pathlib.Path,
        on_change: Callable[[ReplicaHandle], None],
        drain_seconds: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.run_dir = data_dir / "run"
        self.log_dir = data_dir / "logs"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._on_change = on_change
        self._drain_seconds = drain_seconds
        self._python = python

    def state_file(self, replica_id: str) -> pathlib.Path:
        return self.run_dir / f"{replica_id}.json"

    async def start(
        self, replica_id: str, deployment_id: str, revision: int, package_dir: pathlib.Path, environment: dict[str, str]
    ) -> ReplicaHandle:
        handle = ReplicaHandle(replica_id, deployment_id, revision, start_time=time.time())
        handle.log_path = self.log_dir / f"{replica_id}.log"
        state_file = self.state_file(replica_id)
        state_file.unlink(missing_ok=True)
        with handle.log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                self._python, "-m", "replica",
                "--package", str(package_dir),
                "--state-file", str(state_file),
                "--replica-id", replica_id,
                "--drain-seconds", str(self._drain_seconds),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                env={**os.environ, **environment},
            )
        handle.pid = process.pid
        handle._tasks.append(asyncio.create_task(self._watch_startup(handle)))
        handle._tasks.append(asyncio.create_task(self._watch_exit(handle, process.wait())))
        return handle

    def adopt(self, replica_id: str, deployment_id: str, revision: int, pid: int, start_time: float) -> ReplicaHandle | None:
        """Take over a replica left running by a previous controller, if it is still alive."""
        if not _is_our_replica(pid, replica_id):
            return None
        handle = ReplicaHandle(replica_id, deployment_id, revision, start_time=start_time, pid=pid, adopted=True)
        handle.log_path = self.log_dir / f"{replica_id}.log"
        handle._tasks.append(asyncio.create_task(self._watch_startup(handle)))
        handle._tasks.append(asyncio.create_task(self._watch_exit(handle, _wait_for_pid_exit(pid))))
        return handle

    def orphan_pids(self, known: set[int]) -> list[int]:
        """Replica processes of this data directory that no handle owns."""
        marker = str(self.run_dir) + os.sep
        found = []
        for entry in pathlib.Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in known:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in cmdline]
            if "replica" in args and any(a.startswith(marker) for a in args):
                found.append(int(entry.name))
        return found

    async def stop(self, handle: ReplicaHandle) -> None:
        """SIGTERM (the replica finishes in-flight work), then SIGKILL if it overstays."""
        if handle.exited or handle.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signal.SIGTERM)
        exit_task = handle._tasks[-1]
        try:
            await asyncio.wait_for(asyncio.shield(exit_task), timeout=self._drain_seconds + 5)
        except asyncio.TimeoutError:
            log.warning("replica %s did not drain in time; killing it", handle.id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGKILL)
            await exit_task

    async def _watch_startup(self, handle: ReplicaHandle) -> None:
        state_file = self.state_file(handle.id)
        while not handle.exited:
            state = _read_state(state_file)
            if state.get("port") and handle.port is None:
                handle.port = int(state["port"])
                if handle.phase is ReplicaPhase.STARTING:
                    handle.phase = ReplicaPhase.LOADING
                    self._on_change(handle)
            if state.get("phase") == "ready" and handle.port:
                if await _health_serving(handle.address):
                    if handle.phase is ReplicaPhase.LOADING:
                        handle.phase = ReplicaPhase.READY
                        handle.ready_time = time.time()
                        self._on_change(handle)
                    return
            if state.get("phase") == "failed":
                handle.load_error = state.get("error") or "the model failed to load"
                return
            await asyncio.sleep(POLL_SECONDS)

    async def _watch_exit(self, handle: ReplicaHandle, exited) -> None:
        handle.exit_code = await exited
        handle.exit_time = time.time()
        state = _read_state(self.state_file(handle.id))
        if state.get("phase") == "failed" and not handle.load_error:
            handle.load_error = state.get("error") or "the model failed to load"
        handle.exited = True
        for task in handle._tasks[:-1]:
            task.cancel()
        self.state_file(handle.id).unlink(missing_ok=True)
        self._on_change(handle)


def _read_state(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


async def _health_serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _is_our_replica(pid: int, replica_id: str) -> bool:
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and replica_id.encode() in cmdline


async def _wait_for_pid_exit(pid: int) -> int | None:
    """Exit watch for a process that is not our child (adopted): poll until it is gone."""
    while True:
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] == "Z":
                return None
        except OSError:
            return None
        await asyncio.sleep(ADOPTED_POLL_SECONDS)
