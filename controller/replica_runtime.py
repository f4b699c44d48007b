"""The replica runtime interface: what the reconciler needs from whatever runs replicas.

Two implementations exist: `controller.runtime.LocalProcessRuntime` (replica processes on
this machine, forked from a fork server) and `controller.ray_runtime.RayRuntime` (replica
processes on the nodes of a Ray cluster, each owned by a named detached actor). A third
(Kubernetes, say) is one new module implementing `ReplicaRuntime`.

What a runtime must provide
- `start()` returns at once with a `ReplicaHandle` in phase STARTING; placement, package
  transfer and the model's load happen afterwards. The runtime then only *observes*: it
  moves the handle STARTING → LOADING (the replica listens; `address` is set) → READY
  (the model's load() returned AND the replica's gRPC health check says SERVING), and
  finally sets `exited` (with `exit_code`, `exit_time`, and `load_error` / `unhealthy`
  when the replica reported them). Every such change is announced with the `on_change`
  callback it was built with; it never restarts, replaces or routes anything itself.
- `address` is reachable from every gateway and from the controller (host:port; the
  replica's own gRPC server, Slipway's `replica/`), and `token` is the credential the
  replica demands (x-slipway-replica-token), issued per replica at its start.
- `stop(handle, drain)` is called only after the reconciler has taken the replica out of
  every gateway's route table (AckRoutes): with `drain` the replica finishes its requests
  in flight (SIGTERM; it drains for up to drain_seconds), without it the replica is
  killed at once. It returns once the replica has exited.
- A replica's process dying on its own (a crash, an OOM kill, its node lost) must end in
  `exited` within a bounded time: the reconciler replaces it.
- Replicas outlive the controller: `adopt()` takes over one a previous controller left
  running (None if it is gone), `stop_orphans()` stops every replica of this controller's
  data directory that no handle owns. Replica rows in the store carry `pid` and
  `start_time`; usage (replica-seconds) is computed from the rows' start and stop times,
  which the reconciler writes — so it is the same whatever the runtime.
- Logs: `handle.log_tail()` is the end of the replica's log (for status messages of a
  replica that died before loading); the whole log is in `log_dir/<replica id>.log` on the
  controller's machine once the replica has exited (a remote runtime copies it there),
  kept for the reconciler's log retention (`old_logs()`).
- Live reload (development deployments): `handle.make_package_available(stored)` makes the
  stored package directory `stored` readable where the replica runs, under the
  `--packages-root` it was started with, before the controller calls its Reload RPC.

What the reconciler assumes
- One reconcile pass at a time calls start/stop; handles are in `Reconciler.replicas`
  keyed by replica ID, and a handle never comes back from `exited`.
- `stop()` may be called for a replica still STARTING or LOADING.
- `close()` is called at shutdown after every replica it meant to stop has been stopped;
  replicas it did not stop keep running (a restart adopts them).
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from controller.domain import ReplicaPhase

if TYPE_CHECKING:
    from controller.isolation import ReplicaUser, Sandboxes

LOG_TAIL_BYTES = 2000
RUNTIMES = ("local", "ray")


RAY_MISSING = (
    "the Ray runtime needs Ray on this machine: pip install 'slipway[ray]' (and Slipway with Ray on every node)"
)


class RuntimeUnavailableError(Exception):
    """The runtime asked for cannot run here (Ray not installed, its cluster unreachable)."""


def require_runtime(name: str) -> None:
    """Fail before anything starts when runtime `name` is unknown or cannot be imported."""
    if name not in RUNTIMES:
        raise RuntimeUnavailableError(f"unknown runtime {name!r} (one of {', '.join(RUNTIMES)})")
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise RuntimeUnavailableError(RAY_MISSING) from None


@dataclass
class ReplicaHandle:
    id: str
    deployment_id: str
    revision: int
    start_time: float
    pid: int | None = None
    port: int | None = None
    # Its HTTP predict route's port (replica/direct.py: the native data plane forwards there).
    http_port: int | None = None
    # Where gateways and the controller reach it (a Ray node's address under the Ray runtime).
    host: str = "127.0.0.1"
    phase: ReplicaPhase = ReplicaPhase.STARTING
    exited: bool = False
    exit_code: int | None = None
    # The model's load error (ExceptionType: message), when the replica reported one.
    load_error: str = ""
    # Why the model took its replica out of service (its is_healthy() failed), when it did.
    unhealthy: str = ""
    log_path: pathlib.Path | None = None
    ready_time: float | None = None
    ready_recorded: bool = False  # the reconciler stored port and ready_time
    exit_time: float | None = None
    adopted: bool = False
    package_dir: pathlib.Path | None = None  # what it was started from (None: adopted)
    # The credential its ReplicaService demands (x-slipway-replica-token), issued at its start.
    token: str = field(default="", repr=False)
    # The user it runs as (None: the controller's), and where that user's package copies are.
    user: ReplicaUser | None = None
    sandboxes: Sandboxes | None = field(default=None, repr=False)
    # The node it runs on (a remote runtime's node ID; "" on this machine).
    node_id: str = ""
    _tasks: list[asyncio.Task] = field(default_factory=list, repr=False)

    def package_path(self, stored: pathlib.Path) -> pathlib.Path:
        """Where this replica reads the stored package `stored` (its user's own copy)."""
        if self.user is None or self.sandboxes is None:
            return stored
        return self.sandboxes.package(self.user, stored)

    async def make_package_available(self, stored: pathlib.Path) -> None:
        """Before a live reload: the stored package `stored` is readable by the replica."""
        await asyncio.to_thread(self.package_path, stored)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" if self.port else ""

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}" if self.http_port else ""

    def observe_ports(self, state: dict) -> bool:
        """Take the ports a replica's state file reports; True once it first reports its gRPC one."""
        if state.get("http_port") and self.http_port is None:
            self.http_port = int(state["http_port"])
        if state.get("port") and self.port is None:
            self.port = int(state["port"])
            return True
        return False

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
            return f.read().decode(errors="replace").strip()


class ReplicaRuntime(Protocol):
    """What runs replicas (see the module's docstring for the contract)."""

    log_dir: pathlib.Path
    # Per-user package copies when replicas run as other users on this machine (else None).
    sandboxes: Sandboxes | None

    async def prewarm(self) -> None:
        """Get ready for the first replica (a fork server, a cluster connection)."""

    async def close(self) -> None:
        """Release what the runtime holds; replicas keep running."""

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
    ) -> ReplicaHandle: ...

    async def stop(self, handle: ReplicaHandle, drain: bool = True) -> None: ...

    async def adopt(
        self, replica_id: str, deployment_id: str, revision: int, pid: int | None, start_time: float
    ) -> ReplicaHandle | None: ...

    async def stop_orphans(self, known: set[str]) -> int:
        """Stop replicas of this data directory whose ID is not in `known`; how many."""
        ...

    def helper_pids(self) -> set[int]:
        """Processes of this machine the runtime keeps besides replicas (fork servers)."""
        ...

    def old_logs(self, live: set[str], cutoff: float) -> list[pathlib.Path]:
        """Log files of replicas not in `live`, last written before `cutoff` (a time)."""
        ...


def exit_description(code: int | None) -> str:
    """How a replica ended, from its exit code (negative: the signal that killed it)."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def log_limit_args(line_bytes: int, rate_bytes: int) -> list[str]:
    """The bounds of what a replica's log keeps (replica/capture.py), as its flags."""
    return ["--log-line-bytes", str(line_bytes), "--log-rate-bytes", str(rate_bytes)]


def tracing_args(otlp_endpoint: str | None, deployment_id: str, model_id: str, model_name: str = "") -> list[str]:
    """What the replica serves (its traces are labelled with it, and its direct routes refuse
    calls naming another target), and where it exports traces when the controller was told."""
    identity = ["--deployment-id", deployment_id, "--model-id", model_id, "--model-name", model_name]
    return [*identity, *(["--otlp-endpoint", otlp_endpoint] if otlp_endpoint else [])]
