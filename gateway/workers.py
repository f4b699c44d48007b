"""`slipway gateway --workers N`: N gateway processes on one gRPC and one HTTP port.

Each worker is a whole gateway (its own route stream, gateway_id, acknowledgements and
load reports; the controller treats it as one more gateway) listening with
SO_REUSEPORT, so the kernel spreads new connections over the workers and one
machine's gateway uses all its cores. The parent only supervises:

- it reserves both ports first (a socket bound with SO_REUSEPORT that never listens,
  held while it runs), so port 0 becomes one port for all and a taken port fails here;
- it resolves the internal token once and hands the settings to each worker through
  its stdin (a pickle), then keeps that pipe open as the worker's lifeline: a worker
  stops gracefully when it reads end of file, which the kernel guarantees on any end
  of the parent, SIGKILL included;
- a worker that exits is started again (after 0.5 s, doubling while it keeps dying
  young, at most 10 s); one that fails its very first start stops the whole command;
- SIGTERM or SIGINT stops every worker with SIGTERM (each drains as a gateway does)
  and kills those still running after the grace period.

    python -m gateway.workers   (started by the parent only; reads its settings on stdin)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

from gateway.server import Gateway, GatewaySettings, new_gateway_id

log = logging.getLogger("slipway.gateway.workers")

MAX_WORKERS = 64
READY = b"ready\n"
# A worker listens once it has the route table (or after this long, the controller being away):
# the kernel would otherwise hand it connections it can only answer 503 ROUTES_UNAVAILABLE.
WORKER_SYNC_SECONDS = 10.0


@dataclass(frozen=True)
class SupervisorPolicy:
    restart_delay_seconds: float = 0.5
    max_restart_delay_seconds: float = 10.0
    # A worker that ran this long before exiting restarts after the first delay again.
    healthy_after_seconds: float = 10.0
    # Longest the first start of a worker may take before the command gives up.
    start_timeout_seconds: float = 60.0


class WorkerStartError(RuntimeError):
    pass


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT and never listening: it takes no
    connection, but holds the port (the one the kernel chose, for port 0) for the workers."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    reserved = socket.socket(family, kind, proto)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserved.bind(address)
    except OSError as error:
        reserved.close()
        raise WorkerStartError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return reserved


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.restarts = 0


class WorkerSupervisor:
    def __init__(
        self, settings: GatewaySettings, count: int, log_level: str, policy: SupervisorPolicy | None = None
    ) -> None:
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}, not {count}")
        self.settings = settings
        self.count = count
        self.log_level = log_level
        self.policy = policy or SupervisorPolicy()
        self.workers = [Worker(index) for index in range(count)]
        self._reserved: list[socket.socket] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.grpc_port = self.http_port = 0

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None and w.process.returncode is None]

    async def start(self) -> None:
        settings = self.settings
        try:
            for port in (settings.grpc_port, settings.http_port):
                self._reserved.append(reserve_port(settings.host, port))
            self.grpc_port, self.http_port = (s.getsockname()[1] for s in self._reserved)
            self.settings = dataclasses.replace(
                settings,
                grpc_port=self.grpc_port,
                http_port=self.http_port,
                reuse_port=True,
                sync_before_listening_seconds=WORKER_SYNC_SECONDS,
                internal_token=settings.resolved_internal_token(),
                gateway_id="",
            )
            await asyncio.gather(*(self._spawn(worker) for worker in self.workers))
        except BaseException:
            await self.stop()
            raise
        self._tasks = [asyncio.create_task(self._supervise(worker)) for worker in self.workers]
        log.info(
            "gateway workers listening",
            extra={
                "fields": {
                    "grpc": f"{settings.host}:{self.grpc_port}",
                    "http": f"{settings.host}:{self.http_port}",
                    "workers": self.pids,
                }
            },
        )

    async def _spawn(self, worker: Worker) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.workers", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert process.stdin is not None and process.stdout is not None
        payload = pickle.dumps((self.settings, self.log_level))
        process.stdin.write(struct.pack(">I", len(payload)) + payload)
        await process.stdin.drain()
        worker.process, worker.started_at = process, time.monotonic()
        try:
            async with asyncio.timeout(self.policy.start_timeout_seconds):
                line = await process.stdout.readline()
        except TimeoutError:
            line = b""
        if line != READY:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
            raise WorkerStartError(f"gateway worker {worker.index} did not start (exit code {code}; see its log above)")

    async def _supervise(self, worker: Worker) -> None:
        delay = self.policy.restart_delay_seconds
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping:
                return
            lived = time.monotonic() - worker.started_at
            delay = self.policy.restart_delay_seconds if lived >= self.policy.healthy_after_seconds else delay
            log.warning(
                "gateway worker exited; starting another",
                extra={"fields": {"pid": worker.process.pid, "code": code, "restart_in_seconds": delay}},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.policy.max_restart_delay_seconds)
            if self._stopping:
                return
            try:
                await self._spawn(worker)
            except WorkerStartError as error:
                log.warning(str(error))
                continue
            worker.restarts += 1
            log.info("gateway worker started", extra={"fields": {"pid": worker.process.pid, "worker": worker.index}})

    async def stop(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after the grace period."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waiting = asyncio.gather(*(process.wait() for process in running))
        try:
            async with asyncio.timeout(self.settings.shutdown_grace_seconds + 5):
                await waiting
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(process.wait() for process in running))
        for process in running:
            if process.stdin is not None:
                process.stdin.close()
        for reserved in self._reserved:
            reserved.close()
        self._reserved.clear()
        log.info("gateway workers stopped")


async def run_gateway_workers(settings: GatewaySettings, count: int, log_level: str) -> None:
    from slipway.process import wait_for_termination_signal

    supervisor = WorkerSupervisor(settings, count, log_level)
    await supervisor.start()
    try:
        await wait_for_termination_signal()
    finally:
        await supervisor.stop()


# --- in a worker -------------------------------------------------------------------


def _read_settings() -> tuple[GatewaySettings, str]:
    stdin = sys.stdin.buffer
    (size,) = struct.unpack(">I", stdin.read(4))
    settings, log_level = pickle.loads(stdin.read(size))
    return dataclasses.replace(settings, gateway_id=new_gateway_id()), log_level


async def _serve(settings: GatewaySettings) -> None:
    gateway = await Gateway.start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def lifeline() -> None:  # the parent is gone when its end of stdin reads as end of file
        if not os.read(0, 4096):
            loop.remove_reader(0)
            log.warning("the gateway's supervisor is gone; stopping")
            stop.set()

    loop.add_reader(0, lifeline)
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def main() -> None:
    from slipway.logs import configure

    settings, log_level = _read_settings()
    configure(log_level.upper())
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
