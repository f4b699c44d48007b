"""The haproxy child of a gateway in native mode: started on the public ports, fed every
route table through the runtime API, polled for its load, stopped with the gateway.

A table is applied in `apply`, which the route follower awaits before it acknowledges the
table's version (RouteFollower.on_applied). Each runtime-API command answers only once HAProxy
has applied it, so when `apply` returns HAProxy routes no new request to a replica the table
removed: that answer is the equivalent confirmation of an xDS ACK, and the controller drains
the replica only after it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.forwarder import LoadMeter
from gateway.metrics import GatewayMetrics
from gateway.native import commands, config, desired
from gateway.native.access_log import AccessLog
from gateway.native.runtime import BACKENDS, SERVERS, RuntimeApi, succeeded
from gateway.routing import RouteIndex

log = logging.getLogger("slipway.gateway.native")

HAPROXY_ENV = "SLIPWAY_HAPROXY"
POLL_SECONDS = 0.1
START_SECONDS = 10.0
SLOT_BACKEND = re.compile(r"[gh](\d+)")


def find_haproxy() -> str | None:
    """The haproxy binary: $SLIPWAY_HAPROXY, else `haproxy` on PATH (or Debian's /usr/sbin)."""
    named = os.environ.get(HAPROXY_ENV)
    if named:
        return named if os.access(named, os.X_OK) else None
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def _die_with_parent(command: list[str]) -> list[str]:
    """`command` run so that it gets SIGKILL when the gateway process dies, however it dies
    (PR_SET_PDEATHSIG, through util-linux's setpriv: a preexec_fn would run Python in the forked
    child of a process with gRPC's threads, which can abort it)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *command] if setpriv else command


@dataclass
class BackendCounters:
    sessions: int = 0  # stot
    by_class: tuple[int, int, int] = (0, 0, 0)  # hrsp_2xx, hrsp_4xx, hrsp_5xx


class NativeDataPlane:
    def __init__(
        self,
        base: config.ProxyConfig,
        index: Callable[[], RouteIndex],
        loads: dict[str, LoadMeter],
        haproxy: str,
        host: str,
        grpc_port: int,
        http_port: int,
        shutdown_grace_seconds: float,
        tls_pem: bytes | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.base = base
        self._tls_pem = tls_pem  # certificate chain and key, written into the run dir (0600)
        self._index = index
        self._loads = loads
        self.haproxy = haproxy
        self._host, self._grpc_port, self._http_port = host, grpc_port, http_port
        self.grace = shutdown_grace_seconds
        self.slots = desired.Slots(base.slots)
        self.state = desired.ProxyState()
        self.retiring: dict[tuple[str, str], int] = {}  # commands.Retiring
        self.next_expiry = math.inf
        self.run_dir = ""
        self.api: RuntimeApi
        self.process: subprocess.Popen | None = None
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        self._counters: dict[str, BackendCounters] = {}
        self._native_deployments: set[str] = set()
        self.grpc_port = self.http_port = 0
        self._sockets: list[socket.socket] = []
        if metrics is None:  # no Prometheus series: the answers still count in the loads
            metrics = GatewayMetrics(index, enabled=False)
            metrics.count_answers(lambda deployment_id, cls, seconds: loads[deployment_id].answer(cls, seconds))
        # Fast-path requests, one log line each, recorded as the Python data plane's (access_log.py).
        self.access_log = AccessLog(metrics, index, lambda: self.slots.owner)

    # -- process ---------------------------------------------------------------------------

    async def start(self, python_grpc_port: int, python_http_port: int) -> None:
        """haproxy on the public ports, in front of the Python gateway's internal ones."""
        self.run_dir = tempfile.mkdtemp(prefix="slipway-haproxy-")
        os.chmod(self.run_dir, 0o700)
        tls_path = None
        if self._tls_pem is not None:
            tls_path = os.path.join(self.run_dir, "tls.pem")
            descriptor = os.open(tls_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(self._tls_pem)
        for name in desired.MAPS:
            open(os.path.join(self.run_dir, name), "w").close()
        for name, page in config.error_pages().items():
            with open(os.path.join(self.run_dir, name), "wb") as file:
                file.write(page)
        # Kept open while the gateway runs: a haproxy that dies is started again on the same
        # sockets (connections wait in the backlog meanwhile).
        self._sockets = [_listen(self._host, self._grpc_port), _listen(self._host, self._http_port)]
        self.grpc_port, self.http_port = (s.getsockname()[1] for s in self._sockets)
        cfg = replace(
            self.base,
            run_dir=self.run_dir,
            grpc_bind=f"fd@{self._sockets[0].fileno()}",
            http_bind=f"fd@{self._sockets[1].fileno()}",
            python_grpc=f"127.0.0.1:{python_grpc_port}",
            python_http=f"127.0.0.1:{python_http_port}",
            tls_pem=tls_path,
        )
        with open(os.path.join(self.run_dir, "haproxy.cfg"), "w") as file:
            file.write(config.render(cfg))
        try:
            await self._spawn()
        except BaseException:
            await self.stop()
            raise
        await self.apply()
        self._poller = asyncio.create_task(self._poll())

    async def _spawn(self) -> None:
        """Start haproxy (quiet: only alerts, into haproxy.log of the run dir) and wait for its API."""
        with open(os.path.join(self.run_dir, "haproxy.log"), "ab") as errors:
            self.process = subprocess.Popen(
                _die_with_parent([self.haproxy, "-f", os.path.join(self.run_dir, "haproxy.cfg"), "-db", "-q"]),
                pass_fds=[s.fileno() for s in self._sockets],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        self.api = RuntimeApi(os.path.join(self.run_dir, "admin.sock"))
        await self._wait_started()
        self.access_log.connect(self.api.socket_path)  # before any route is on the fast path
        log.info(
            "native data plane started",
            extra={"fields": {"haproxy_pid": self.process.pid, "grpc": self.grpc_port, "http": self.http_port}},
        )

    async def _restart(self) -> None:
        """haproxy died: a new one on the same sockets, given the whole state again."""
        assert self.process is not None
        log.error("haproxy exited; starting it again", extra={"fields": {"code": self.process.returncode}})
        await self.api.close()
        async with self._lock:
            self.state, self.retiring, self.slots = desired.ProxyState(), {}, desired.Slots(self.base.slots)
            self._counters.clear()
            await self._spawn()
        await self.apply()

    async def _wait_started(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                with open(os.path.join(self.run_dir, "haproxy.log"), errors="replace") as file:
                    stderr = file.read()[-2000:]
                raise OSError(f"haproxy exited at start ({self.process.returncode}): {stderr.strip()}")
            with contextlib.suppress(OSError):
                await self.api.run(["show info"])
                return
            if time.monotonic() > deadline:
                raise OSError(f"haproxy's runtime API did not answer within {START_SECONDS:g}s")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Soft stop (haproxy finishes the requests in flight), SIGKILL after the grace period."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        with contextlib.suppress(AttributeError):
            await self.api.close()
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + self.grace
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if process.poll() is None:
                process.kill()
            await asyncio.to_thread(process.wait)
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        self.access_log.drain()
        self.access_log.close()
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        for deployment_id in self._native_deployments:
            if deployment_id in self._loads:
                self._loads[deployment_id].set_native(0)

    # -- tables ----------------------------------------------------------------------------

    async def apply(self) -> None:
        """Bring HAProxy to the current route table (and key expiries); see the module docstring.
        Never raises (the route follower awaits it): a failure is logged, and the next table or
        poll applies the state again."""
        if self.process is None or not self.run_dir:
            return
        async with self._lock:
            try:
                await self._apply()
            except Exception as error:  # noqa: BLE001
                log.error("haproxy refused a route change", extra={"fields": {"error": str(error)}})

    async def _apply(self) -> None:
        busy = {slot: False for slot in range(self.slots.count)}
        for backend in [*(b for b, servers in self.state.servers.items() if servers), *(b for b, _ in self.retiring)]:
            busy[int(backend[1:])] = True
        wanted, unplaced, self.next_expiry = desired.desired_state(
            self._index(), time.time(), self.slots, busy, self.base.require_keys
        )
        for deployment_id in unplaced:
            log.warning(
                "no free native slot: the deployment stays on the Python data plane",
                extra={"fields": {"deployment_id": deployment_id, "slots": self.slots.count}},
            )
        target = commands.target_state(self.state, wanted, self.retiring, self.base.seats)
        lines, retired = commands.transition(self.run_dir, self.state, target)
        self.state = target
        self.retiring.update(retired)
        await self.api.apply(lines)

    # -- polling ---------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                if self.process is not None and self.process.poll() is not None:
                    await self._restart()
                if not self.access_log.connected:
                    self.access_log.connect(self.api.socket_path)
                # Backends only (two rows a slot), ten times a second: the servers' rows (eight
                # seats a slot) are read only while a server waits to be deleted.
                self._feed_loads(await self.api.stats(BACKENDS))
                if self.retiring:
                    await self._delete_drained(await self.api.stats(SERVERS))
                if time.time() >= self.next_expiry:
                    await self.apply()
            except Exception as error:  # noqa: BLE001 (the poller must outlive a bad answer)
                log.warning("haproxy stats unavailable", extra={"fields": {"error": str(error)}})

    async def _delete_drained(self, rows: list[dict[str, str]]) -> None:
        """Servers in maintenance with no session left are deleted (their slot can be reused)."""
        sessions = {(r["pxname"], r["svname"]): int(r.get("scur") or 0) for r in rows}
        drained = [
            (key, seat)
            for key, seat in self.retiring.items()
            if sessions.get((key[0], key[1] if seat < 0 else f"s{seat}"), 0) == 0
        ]
        if not drained:
            return
        dynamic = [key for key, seat in drained if seat < 0]
        for key, seat in drained:
            if seat >= 0:  # a seat is free again
                del self.retiring[key]
        async with self._lock:
            answers = await self.api.run([f"del server {backend}/{name}" for backend, name in dynamic])
        for key, answer in zip(dynamic, answers, strict=True):
            if succeeded("del server", answer) or "No such server" in answer:
                del self.retiring[key]
        await self.apply()  # a replaced server (same token) comes back; freed slots are reusable

    def _feed_loads(self, rows: list[dict[str, str]]) -> None:
        """Each slot's sessions and queue into its deployment's LoadMeter (the autoscaler's load
        reports, scale-to-zero idleness and /metrics' in-flight count include native traffic).
        Its answers (status classes, latency buckets) come from the access log (access_log.py)."""
        owner = {slot: deployment_id for deployment_id, slot in self.slots.owner.items()}
        in_flight: dict[str, int] = {}
        for row in rows:
            match = SLOT_BACKEND.fullmatch(row["pxname"])
            if match is None or row["svname"] != "BACKEND":
                continue
            counters = BackendCounters(
                int(row.get("stot") or 0),
                (int(row.get("hrsp_2xx") or 0), int(row.get("hrsp_4xx") or 0), int(row.get("hrsp_5xx") or 0)),
            )
            previous = self._counters.get(row["pxname"], BackendCounters())
            self._counters[row["pxname"]] = counters
            deployment_id = owner.get(int(match[1]))
            if deployment_id is None:
                continue
            load = self._loads[deployment_id]
            self._native_deployments.add(deployment_id)
            in_flight[deployment_id] = (
                in_flight.get(deployment_id, 0) + int(row.get("scur") or 0) + int(row.get("qcur") or 0)
            )
            load.native_requests += max(counters.sessions - previous.sessions, 0)
        for deployment_id in self._native_deployments:
            meter = self._loads.get(deployment_id)
            if meter is not None:
                meter.set_native(in_flight.get(deployment_id, 0))


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket haproxy inherits (so port 0 works and no other process can take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.set_inheritable(True)
    except OSError as error:
        sock.close()
        # The Python plane's error (grpc's server.add_*_port raises this RuntimeError).
        raise RuntimeError(f"Failed to bind to address {host}:{port}: {error.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock
