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
import shutil
import signal
import sys
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.domain import ReplicaPhase
from controller.fork_server import POLL_SECONDS, ForkServer, wait_for_pid_exit
from controller.isolation import ReplicaUser, Sandboxes
from controller.replica_runtime import ReplicaHandle, exit_description, log_limit_args, tracing_args
from replica.package import without_secrets
from slipway.internal_auth import REPLICA_TOKEN_ENV, TokenFileError, new_token, read_token_file, write_private
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES

log = logging.getLogger("slipway.runtime")

# Re-exported: the handle and exit_description lived here before the interface had a module.
__all__ = ["LocalProcessRuntime", "ReplicaHandle", "exit_description"]


class LocalProcessRuntime:
    """Replicas listen on loopback only (the replica's default host; the runtime gives no other)."""

    def __init__(
        self,
        data_dir: pathlib.Path,
        packages_root: pathlib.Path,
        on_change: Callable[[ReplicaHandle], None],
        drain_seconds: float = 30.0,
        python: str = sys.executable,
        fork: bool = True,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        health_check_seconds: float = 10.0,
        sandboxes: Sandboxes | None = None,
        log_line_bytes: int = 16 * 1024,
        log_rate_bytes: int = 1024 * 1024,
        otlp_endpoint: str | None = None,
    ) -> None:
        self.run_dir = data_dir / "run"
        self.log_dir = data_dir / "logs"
        # Where the controller stores unpacked packages: the only place a development replica reloads from.
        self.packages_root = packages_root
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Replicas that run as other users (see controller/isolation.py) enter run/ to reach their own directory.
        self.sandboxes = sandboxes
        if sandboxes is not None:
            self.run_dir.chmod(0o711)
        self._on_change = on_change
        self._drain_seconds = drain_seconds
        self._max_request_bytes = max_request_bytes
        self._health_check_seconds = health_check_seconds
        # Bounds of what a replica's log keeps (replica/capture.py).
        self._log_limits = log_limit_args(log_line_bytes, log_rate_bytes)
        self._otlp_endpoint = otlp_endpoint
        self._python = python
        # With `fork`, replicas are forked from a pre-imported fork server per interpreter.
        self._fork = fork
        self._fork_servers: dict[str, ForkServer] = {}
        # Every handle this runtime made or adopted, by replica ID (stop_orphans spares their PIDs).
        self._handles: dict[str, ReplicaHandle] = {}

    def _fork_server(self, python: str) -> ForkServer:
        server = self._fork_servers.get(python)
        if server is None:
            name = f"forkserver-{len(self._fork_servers)}.log"
            server = self._fork_servers[python] = ForkServer(python, self.run_dir, self.log_dir / name)
        return server

    async def prewarm(self) -> None:
        """Start the fork server of the controller's interpreter ahead of the first replica."""
        if self._fork:
            try:
                await self._fork_server(self._python).ensure_started()
            except RuntimeError:
                log.exception("fork server unavailable; replicas start as new processes")

    async def close(self) -> None:
        for server in self._fork_servers.values():
            await server.stop()

    def helper_pids(self) -> set[int]:
        return {s.pid for s in self._fork_servers.values() if s.pid is not None}

    def old_logs(self, live: set[str], cutoff: float) -> list[pathlib.Path]:
        """Log files of replicas not in `live`, last written before `cutoff` (a time)."""
        return [
            path
            for path in self.log_dir.glob("*.log")
            if path.stem not in live and not path.name.startswith("forkserver") and path.stat().st_mtime < cutoff
        ]

    def state_file(self, replica_id: str) -> pathlib.Path:
        """Where the replica reports; in a directory of its own when it runs as another user."""
        own = self.run_dir / replica_id
        return own / "state.json" if own.is_dir() else self.run_dir / f"{replica_id}.json"

    def _own_run_dir(self, replica_id: str, user: ReplicaUser) -> pathlib.Path:
        own = self.run_dir / replica_id
        own.mkdir(mode=0o700)
        os.chown(own, user.uid, user.gid)
        return own

    def token_file(self, replica_id: str) -> pathlib.Path:
        """The replica's token, kept (private) so that a restarted controller can adopt it."""
        return self.run_dir / f"{replica_id}.token"

    async def start(
        self,
        replica_id: str,
        deployment_id: str,
        revision: int,
        package_dir: pathlib.Path,
        environment: dict[str, str],
        python: str | None = None,
        development: bool = False,
        user: ReplicaUser | None = None,
        model_id: str = "",
        model_name: str = "",
    ) -> ReplicaHandle:
        """Start a replica. `environment` is added to the controller's own, less its
        secrets (so it carries the secrets the replica may see). `python` is the
        interpreter of the deployment's built environment; None means the controller's own.
        Only a `development` replica accepts Reload. With `user`, the replica runs as that user,
        from its own copy of the package. Its token never goes on the command line: a forked
        replica gets it in its environment (set after the fork, cleared by the replica before
        any model code runs), a new process through an inherited pipe."""
        handle = ReplicaHandle(
            replica_id,
            deployment_id,
            revision,
            start_time=time.time(),
            package_dir=package_dir,
            user=user,
            sandboxes=self.sandboxes,
            token=new_token(),
        )
        handle.log_path = self.log_dir / f"{replica_id}.log"
        write_private(self.token_file(replica_id), handle.token)
        # What Reload may load from: the stored packages, or this user's copies of them.
        packages_root = self.packages_root
        home = None
        if user is not None:
            assert self.sandboxes is not None, "replica users need sandboxes"
            home = packages_root = self.sandboxes.home(user)
            package_dir = await asyncio.to_thread(handle.package_path, package_dir)
            state_file = self._own_run_dir(replica_id, user) / "state.json"
            environment = {**environment, "HOME": str(home)}
        else:
            state_file = self.state_file(replica_id)
            state_file.unlink(missing_ok=True)
        argv = [
            "--package",
            str(package_dir),
            "--state-file",
            str(state_file),
            "--replica-id",
            replica_id,
            "--drain-seconds",
            str(self._drain_seconds),
            "--max-request-bytes",
            str(self._max_request_bytes),
            "--health-check-seconds",
            str(self._health_check_seconds),
            "--packages-root",
            str(packages_root),
            *self._log_limits,
            *(["--development"] if development else []),
            *tracing_args(self._otlp_endpoint, deployment_id, model_id, model_name),
        ]
        interpreter = python or self._python
        exited = None
        if self._fork:
            try:
                # Set in the forked child after fork: never in its /proc/PID/environ.
                handle.pid, exited = await self._fork_server(interpreter).spawn(
                    argv, {**environment, REPLICA_TOKEN_ENV: handle.token}, handle.log_path, replica_id, user, home
                )
            except (OSError, RuntimeError, ValueError) as error:
                log.warning("fork server failed (%s); starting replica %s as a new process", error, replica_id)
        if exited is None:
            # A new interpreter's environment stays readable in /proc/PID/environ: the token
            # comes through an inherited pipe instead (it fits the pipe's buffer).
            token_read, token_write = os.pipe()
            try:
                os.write(token_write, handle.token.encode())
                os.close(token_write)
                with handle.log_path.open("ab") as log_file:
                    process = await asyncio.create_subprocess_exec(
                        interpreter,
                        "-m",
                        "replica",
                        *argv,
                        "--token-fd",
                        str(token_read),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=log_file,
                        start_new_session=True,
                        env={**without_secrets(os.environ), **environment},
                        pass_fds=(token_read,),
                        **_as_user(user, home),
                    )
            finally:
                os.close(token_read)
            handle.pid = process.pid
            exited = process.wait()
        handle._tasks.append(asyncio.create_task(self._watch_startup(handle)))
        handle._tasks.append(asyncio.create_task(self._watch_exit(handle, exited)))
        self._handles[replica_id] = handle
        return handle

    async def adopt(
        self, replica_id: str, deployment_id: str, revision: int, pid: int | None, start_time: float
    ) -> ReplicaHandle | None:
        """Take over a replica left running by a previous controller, if it is still alive."""
        if pid is None or not _is_our_replica(pid, replica_id):
            return None
        try:
            token = read_token_file(self.token_file(replica_id))
        except TokenFileError:
            log.warning("replica %s has no token on record; not adopting it", replica_id)
            return None
        handle = ReplicaHandle(
            replica_id, deployment_id, revision, start_time=start_time, pid=pid, adopted=True, token=token
        )
        handle.log_path = self.log_dir / f"{replica_id}.log"
        if self.sandboxes is not None:
            handle.user, handle.sandboxes = _process_user(pid), self.sandboxes
        handle._tasks.append(asyncio.create_task(self._watch_startup(handle)))
        handle._tasks.append(asyncio.create_task(self._watch_exit(handle, wait_for_pid_exit(pid))))
        self._handles[replica_id] = handle
        return handle

    async def stop_orphans(self, known: set[str]) -> int:
        """SIGKILL replica processes of this data directory that no handle in `known` owns."""
        owned = {int(pid) for pid in map(self._pid_of, known) if pid is not None}
        orphans = self.orphan_pids(owned)
        for pid in orphans:
            log.warning("stopping orphaned replica process %s", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(orphans)

    def _pid_of(self, replica_id: str) -> int | None:
        handle = self._handles.get(replica_id)
        return handle.pid if handle is not None and not handle.exited else None

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
            ours = "replica" in args or "replica.forkserver" in args  # forked replicas share the server's
            if ours and any(a.startswith(marker) for a in args):
                found.append(int(entry.name))
        return found

    async def stop(self, handle: ReplicaHandle, drain: bool = True) -> None:
        """SIGTERM (the replica finishes in-flight work), then SIGKILL if it overstays;
        without `drain`, SIGKILL at once. A kill takes the replica's process group (it
        leads its own session), so processes the model started go with it."""
        if handle.exited or handle.pid is None:
            return
        if drain:
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGTERM)
        else:
            _kill_group(handle.pid)
        exit_task = handle._tasks[-1]
        try:
            async with asyncio.timeout(self._drain_seconds + 5):
                await asyncio.shield(exit_task)
        except TimeoutError:
            log.warning("replica %s did not drain in time; killing it", handle.id)
            _kill_group(handle.pid)
            await exit_task

    async def _watch_startup(self, handle: ReplicaHandle) -> None:
        state_file = self.state_file(handle.id)
        while not handle.exited:
            state = _read_state(state_file)
            if handle.observe_ports(state):
                if handle.phase is ReplicaPhase.STARTING:
                    handle.phase = ReplicaPhase.LOADING
                    self._on_change(handle)
            if state.get("phase") == "ready" and handle.port:
                if await health_serving(handle.address):
                    if handle.phase is ReplicaPhase.LOADING:
                        handle.phase = ReplicaPhase.READY
                        handle.ready_time = time.time()
                        self._on_change(handle)
                    return
            if state.get("phase") == "failed":
                handle.load_error = load_error_of(state)
                return
            await asyncio.sleep(POLL_SECONDS)

    async def _watch_exit(self, handle: ReplicaHandle, exited) -> None:
        handle.exit_code = await exited
        handle.exit_time = time.time()
        state = _read_state(self.state_file(handle.id))
        if state.get("phase") == "failed" and not handle.load_error:
            handle.load_error = load_error_of(state)
        if state.get("phase") == "unhealthy":
            handle.unhealthy = state.get("error") or "is_healthy() failed"
        handle.exited = True
        for task in handle._tasks[:-1]:
            task.cancel()
        state_file = self.state_file(handle.id)
        state_file.unlink(missing_ok=True)
        if state_file.parent != self.run_dir:
            shutil.rmtree(state_file.parent, ignore_errors=True)
        self.token_file(handle.id).unlink(missing_ok=True)
        self._handles.pop(handle.id, None)
        self._on_change(handle)


def _as_user(user: ReplicaUser | None, home: pathlib.Path | None) -> dict:
    """subprocess arguments that start a process as `user` (no supplementary groups) in `home`."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": [], "cwd": home}


def _process_user(pid: int) -> ReplicaUser | None:
    """The user a process runs as, unless it is the controller's own (or it is gone)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid, gid = int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])
    return None if uid == os.geteuid() else ReplicaUser(uid, gid)


def _kill_group(pid: int) -> None:
    """SIGKILL a replica and the processes its model started (its process group; a replica
    forked an instant ago may not lead its group yet, then the process alone)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _read_state(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


async def health_serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _is_our_replica(pid: int, replica_id: str) -> bool:
    """A live process started for this replica: by its command line, or (forked) by its name."""
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        name = pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and (replica_id.encode() in cmdline or name == replica_id[:15])


def load_error_of(state: dict) -> str:
    """A failed replica's report: the error, then the model's own frames when it has any."""
    error = state.get("error") or "the model failed to load"
    traceback = state.get("traceback") or ""
    return f"{error}\n{traceback.rstrip()}" if traceback.startswith("Traceback") else error
