"""The Ray runtime: replicas placed on the nodes of a Ray cluster (`--runtime ray`).

Each replica is Slipway's own model server (`python -m replica`) on a node Ray chooses,
started and owned by a named detached actor (controller/ray_supervisor.py) in a namespace
of this controller's data directory: the actor outlives the controller, so a restarted
controller adopts it by name, and stops the actors nothing owns. The actor asks Ray for
the resources of the package's config.yaml (controller/ray_resources.py); a request no
node could ever hold fails the start at once with a status message saying so, rather
than waiting silently. Packages travel through Ray's object store (a tar archive put once
per digest) and are unpacked once per node; so are the requirements environments the
controller builds (controller/ray_environments.py, once per environment key). Replica tokens are kept in the controller's
run directory, as the local runtime keeps them, so that an adopted replica is reachable.

The contract it keeps is controller/replica_runtime.py's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import logging
import os
import pathlib
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.domain import ReplicaPhase
from controller.isolation import AUTO, CONTROLLER_USER, DEFAULT_UID_RANGE, ReplicaUser, Sandboxes
from controller.ray_environments import ENVS_KEPT, EnvironmentShipError, pack_environment
from controller.ray_node_cache import DEFAULT_NODE_CACHE_BYTES
from controller.ray_resources import RayResources, ray_resources, unplaceable
from controller.ray_supervisor import ReplicaSupervisor
from controller.replica_runtime import RAY_MISSING, ReplicaHandle, RuntimeUnavailableError, log_limit_args, tracing_args
from controller.runtime import health_serving, load_error_of
from replica.package import load_package_config
from slipway.internal_auth import TokenFileError, new_token, read_token_file, write_private
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES

log = logging.getLogger("slipway.ray_runtime")

STATE_WAIT_SECONDS = 5.0
ACTOR_CALL_SECONDS = 30.0
# The controller's copy of a replica's log follows the node's this often, this much per read.
LOG_SYNC_SECONDS = 1.0
LOG_CHUNK_BYTES = 1024 * 1024
ARCHIVES_KEPT = 32
# Names of pool actors (replica IDs start with "r"): a replica keeps the name of the actor it took.
WARM_PREFIX = "w"


def namespace_for(data_dir: pathlib.Path) -> str:
    """One Ray namespace per controller data directory: its replicas' actors, and nobody else's."""
    return "slipway-" + hashlib.sha256(str(pathlib.Path(data_dir).absolute()).encode()).hexdigest()[:16]


@dataclass
class RayReplicaHandle(ReplicaHandle):
    actor: Any = field(default=None, repr=False)
    runtime: RayRuntime | None = field(default=None, repr=False)
    stopping: bool = False
    actor_name: str = ""
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def make_package_available(self, stored: pathlib.Path) -> None:
        """Live reload: the node unpacks the stored package (once per digest) under its packages root."""
        assert self.runtime is not None
        archive = await self.runtime.archive(stored)
        with contextlib.suppress(self.runtime.ray_error):  # a dead replica fails its Reload call
            await self.actor.put_package.remote(stored.name, [archive])


class RayRuntime:
    def __init__(
        self,
        data_dir: pathlib.Path,
        packages_root: pathlib.Path,
        on_change: Callable[[ReplicaHandle], None],
        address: str | None = None,
        warm_actors: int = 1,
        drain_seconds: float = 30.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        health_check_seconds: float = 10.0,
        log_line_bytes: int = 16 * 1024,
        log_rate_bytes: int = 1024 * 1024,
        otlp_endpoint: str | None = None,
        replica_user: str = CONTROLLER_USER,
        uid_range: tuple[int, int] = DEFAULT_UID_RANGE,
        node_cache_bytes: int = DEFAULT_NODE_CACHE_BYTES,
    ) -> None:
        try:
            import ray
            import ray.exceptions
        except ImportError:
            raise RuntimeUnavailableError(RAY_MISSING) from None
        # A cluster this controller starts (no address) reports no usage to Ray's servers.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self._ray = ray
        self.ray_error: type[Exception] = ray.exceptions.RayError
        self.run_dir = data_dir / "run"
        self.log_dir = data_dir / "logs"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.packages_root = packages_root
        # Per-user package copies are the nodes' own (sandboxes/ of each node's cache, pruned there).
        self.sandboxes: Sandboxes | None = None
        # Whom replicas run as: decided on the node (controller/ray_supervisor.py), by --replica-user.
        self._replica_user = replica_user
        self._uid_range = uid_range
        self._node_cache_bytes = node_cache_bytes
        self.namespace = namespace_for(data_dir)
        self._on_change = on_change
        self._drain_seconds = drain_seconds
        self._max_request_bytes = max_request_bytes
        self._health_check_seconds = health_check_seconds
        self._log_limits = log_limit_args(log_line_bytes, log_rate_bytes)
        self._otlp_endpoint = otlp_endpoint
        self._handles: dict[str, RayReplicaHandle] = {}
        self._archives: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._env_archives: collections.OrderedDict[str, Any] = collections.OrderedDict()
        # Idle actors with default resources and a started fork server, by name: a replica
        # that fits one takes it (no actor to create, no interpreter to start).
        self._warm_target = warm_actors
        self._warm: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._refilling: asyncio.Task | None = None
        # Replica ID -> actor name of replicas in once-warm actors, found by scanning (adopt).
        self._scanned: dict[str, str] | None = None
        try:
            ray.init(
                address=address,
                namespace=self.namespace,
                log_to_driver=False,
                configure_logging=False,
                include_dashboard=False if address is None else None,
            )
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise RuntimeUnavailableError(f"cannot reach the Ray cluster at {address or 'auto'}: {error}") from None
        self._actor_class = ray.remote(ReplicaSupervisor)
        log.info("connected to the Ray cluster", extra={"fields": {"address": address, "namespace": self.namespace}})

    # --- interface --------------------------------------------------------------

    async def prewarm(self) -> None:
        self._refill()

    def _refill(self) -> None:
        if self._refilling is None or self._refilling.done():
            self._refilling = asyncio.create_task(self._fill_pool())

    async def _fill_pool(self) -> None:
        while len(self._warm) < self._warm_target:
            name = WARM_PREFIX + new_token()[:12].lower().replace("-", "x").replace("_", "y")
            actor = self._new_actor(name, RayResources())
            try:
                async with asyncio.timeout(ACTOR_CALL_SECONDS * 4):
                    await actor.prepare.remote()
            except asyncio.CancelledError:
                self._ray.kill(actor)  # the runtime is closing: leave no idle actor behind
                raise
            except (self.ray_error, TimeoutError) as error:
                log.warning("no warm Ray actor (%s); replicas start cold", error)
                self._ray.kill(actor)
                return
            self._warm[name] = actor

    async def close(self) -> None:
        if self._refilling is not None:
            self._refilling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refilling
        for handle in self._handles.values():
            for task in handle._tasks:
                task.cancel()
        for actor in self._warm.values():
            with contextlib.suppress(Exception):
                self._ray.kill(actor)
        self._warm.clear()
        await asyncio.to_thread(self._ray.shutdown)

    def helper_pids(self) -> set[int]:
        return set()

    def old_logs(self, live: set[str], cutoff: float) -> list[pathlib.Path]:
        return [p for p in self.log_dir.glob("*.log") if p.stem not in live and p.stat().st_mtime < cutoff]

    def token_file(self, replica_id: str) -> pathlib.Path:
        return self.run_dir / f"{replica_id}.token"

    def nodes(self) -> list[dict[str, float]]:
        """Total resources of each alive node."""
        return [dict(node["Resources"]) for node in self._ray.nodes() if node.get("Alive")]

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
        """Create the replica's actor; placement, the package's transfer and the model's load follow.
        `python` (a built environment) is shipped to the node (once per node and key). `user` (the
        model's, under --replica-user auto) is the one the node runs the replica as when its Ray
        worker is root. `model_id` names the model in the replica's trace attributes."""
        handle = RayReplicaHandle(
            replica_id, deployment_id, revision, start_time=time.time(), package_dir=package_dir, token=new_token()
        )
        handle.runtime = self
        handle.log_path = self.log_dir / f"{replica_id}.log"
        config = await asyncio.to_thread(load_package_config, package_dir)
        needs = ray_resources(config.raw_dict().get("resources"))
        why = unplaceable(needs, await asyncio.to_thread(self.nodes))
        if why:
            handle.load_error = why
            handle._tasks.append(asyncio.create_task(self._finish(handle)))
            return handle
        write_private(self.token_file(replica_id), handle.token)
        if needs == RayResources() and python is None and self._warm:
            handle.actor_name, handle.actor = self._warm.popitem(last=False)
        else:
            handle.actor_name, handle.actor = replica_id, self._new_actor(replica_id, needs)
        spec = {
            "replica_id": replica_id,
            "digest": package_dir.name,
            "python": None,
            # The built environment's key (its directory's name): the node unpacks its own copy.
            "env_key": pathlib.Path(python).parent.parent.name if python else "",
            "token": handle.token,
            "environment": environment,
            "user": self._user_spec(user),
            "cache_bytes": self._node_cache_bytes,
            "args": [
                "--drain-seconds",
                str(self._drain_seconds),
                "--max-request-bytes",
                str(self._max_request_bytes),
                "--health-check-seconds",
                str(self._health_check_seconds),
                *self._log_limits,
                *(["--development"] if development else []),
                *tracing_args(self._otlp_endpoint, deployment_id, model_id, model_name),
            ],
        }
        self._handles[replica_id] = handle
        env_dir = pathlib.Path(python).parent.parent if python else None
        handle._tasks.append(asyncio.create_task(self._supervise(handle, spec, package_dir, env_dir)))
        return handle

    def _user_spec(self, user: ReplicaUser | None) -> dict[str, Any] | None:
        """What the node needs to decide whom the replica runs as (None: its worker's user)."""
        if self._replica_user == CONTROLLER_USER or (self._replica_user == AUTO and user is None):
            return None
        spec: dict[str, Any] = {"replica_user": self._replica_user, "uid_range": list(self._uid_range)}
        if user is not None:
            spec.update(uid=user.uid, gid=user.gid)
        return spec

    def _new_actor(self, name: str, needs: RayResources) -> Any:
        return self._actor_class.options(
            name=name,
            namespace=self.namespace,
            lifetime="detached",
            max_restarts=0,
            max_concurrency=16,
            scheduling_strategy="SPREAD",
            **needs.options(),
        ).remote(self.namespace, "" if name.startswith(WARM_PREFIX) else name)

    async def stop(self, handle: ReplicaHandle, drain: bool = True) -> None:
        assert isinstance(handle, RayReplicaHandle)
        if handle.exited or handle.actor is None:
            return
        handle.stopping = True
        if handle.pid is None:
            # Not started yet (waiting for placement, or the package): nothing to drain.
            self._ray.kill(handle.actor)
        else:
            with contextlib.suppress(self.ray_error):
                await handle.actor.signal.remote(drain)
        try:
            async with asyncio.timeout(self._drain_seconds + 5):
                await handle._done.wait()
        except TimeoutError:
            log.warning("replica %s did not drain in time; killing it", handle.id)
            self._ray.kill(handle.actor)
            await handle._done.wait()

    async def adopt(
        self, replica_id: str, deployment_id: str, revision: int, pid: int | None, start_time: float
    ) -> ReplicaHandle | None:
        """Take over the actor a previous controller left, if it and its replica are alive."""
        if self._scanned is None:
            self._scanned = await self._scan()
        name = self._scanned.get(replica_id, replica_id)
        try:
            actor = await asyncio.to_thread(self._ray.get_actor, name, self.namespace)
        except ValueError:
            return None
        try:
            async with asyncio.timeout(ACTOR_CALL_SECONDS):
                status = await actor.status.remote()
            token = read_token_file(self.token_file(replica_id))
        except (self.ray_error, TimeoutError, TokenFileError) as error:
            log.warning("not adopting replica %s: %s", replica_id, error)
            return None  # stop_orphans stops it
        if status["exited"] or status["pid"] is None:
            return None
        handle = RayReplicaHandle(
            replica_id,
            deployment_id,
            revision,
            start_time=start_time,
            pid=status["pid"],
            host=status["host"],
            node_id=status["node_id"],
            adopted=True,
            token=token,
        )
        handle.runtime, handle.actor, handle.actor_name = self, actor, name
        handle.log_path = self.log_dir / f"{replica_id}.log"
        self._handles[replica_id] = handle
        handle._tasks.append(asyncio.create_task(self._supervise(handle, None, None)))
        return handle

    async def stop_orphans(self, known: set[str]) -> int:
        """Kill the actors (and so the replicas) of this namespace that no handle owns."""
        names = await asyncio.to_thread(self._ray.util.list_named_actors)
        owners = {name: replica_id for replica_id, name in (self._scanned or {}).items()}
        owners.update({h.actor_name: h.id for h in self._handles.values()})
        doomed = [
            name
            for name in names
            if name not in self._warm
            and owners.get(name, name) not in known
            and owners.get(name, name) not in self._handles
        ]
        for name in doomed:
            log.warning("stopping orphaned replica %s (Ray actor)", name)
            with contextlib.suppress(ValueError, self.ray_error):
                actor = await asyncio.to_thread(self._ray.get_actor, name, self.namespace)
                with contextlib.suppress(self.ray_error):
                    async with asyncio.timeout(ACTOR_CALL_SECONDS):
                        await actor.forget.remote()
                self._ray.kill(actor)
            self.token_file(name).unlink(missing_ok=True)
        return len(doomed)

    async def _scan(self) -> dict[str, str]:
        """Replica ID -> actor name of the once-warm actors of this namespace that hold a replica."""
        names = await asyncio.to_thread(self._ray.util.list_named_actors)
        found: dict[str, str] = {}
        for name in names:
            if not name.startswith(WARM_PREFIX):
                continue
            with contextlib.suppress(ValueError, TimeoutError, self.ray_error):
                actor = await asyncio.to_thread(self._ray.get_actor, name, self.namespace)
                async with asyncio.timeout(ACTOR_CALL_SECONDS):
                    status = await actor.status.remote()
                if status["replica_id"]:
                    found[status["replica_id"]] = name
        return found

    # --- packages ---------------------------------------------------------------

    async def archive(self, package_dir: pathlib.Path) -> Any:
        """The stored package as a tar archive in Ray's object store (put once per digest)."""
        digest = package_dir.name
        ref = self._archives.get(digest)
        if ref is None:
            data = await asyncio.to_thread(_tar, package_dir)
            ref = self._archives[digest] = await asyncio.to_thread(self._ray.put, data)
            while len(self._archives) > ARCHIVES_KEPT:
                self._archives.popitem(last=False)
        self._archives.move_to_end(digest)
        return ref

    async def environment_archive(self, env_dir: pathlib.Path) -> Any:
        """The built environment as a tar archive in Ray's object store (put once per key)."""
        key = env_dir.name
        ref = self._env_archives.get(key)
        if ref is None:
            data = await asyncio.to_thread(pack_environment, env_dir)
            ref = self._env_archives[key] = await asyncio.to_thread(self._ray.put, data)
            while len(self._env_archives) > ENVS_KEPT:
                self._env_archives.popitem(last=False)
        self._env_archives.move_to_end(key)
        return ref

    # --- watching ---------------------------------------------------------------

    async def _supervise(
        self,
        handle: RayReplicaHandle,
        spec: dict | None,
        package_dir: pathlib.Path | None,
        env_dir: pathlib.Path | None = None,
    ) -> None:
        """Start (unless adopted), watch to readiness, wait for the exit, then clean up."""
        try:
            if spec is not None and package_dir is not None:
                archive = await self.archive(package_dir)
                environment = [await self.environment_archive(env_dir)] if env_dir is not None else None
                started = await handle.actor.start.remote(spec, [archive], environment)
                handle.pid, handle.host, handle.node_id = started["pid"], started["host"], started["node_id"]
                if handle.stopping:
                    await handle.actor.signal.remote(False)
            watcher = asyncio.create_task(self._watch_startup(handle))
            follower = asyncio.create_task(self._follow_log(handle))
            try:
                handle.exit_code = await handle.actor.wait_exit.remote()
            finally:
                watcher.cancel()
                follower.cancel()
            status = await handle.actor.status.remote()
            state = status["state"]
            if state.get("phase") == "failed" and not handle.load_error:
                handle.load_error = load_error_of(state)
            if state.get("phase") == "unhealthy":
                handle.unhealthy = state.get("error") or "is_healthy() failed"
            await self._copy_log(handle)
        except self.ray_error as error:
            # The actor died: killed, or its node was lost (the replica died with it).
            if isinstance(error, self._ray.exceptions.RayTaskError) and not handle.load_error:
                handle.load_error = f"the replica could not start on its node: {error.cause}"
            log.warning("replica %s's actor is gone: %s", handle.id, type(error).__name__)
        except EnvironmentShipError as error:
            handle.load_error = str(error)
            log.warning("replica %s: %s", handle.id, error)
        except asyncio.CancelledError:
            return  # the controller is closing: the replica runs on, for the next one to adopt
        with contextlib.suppress(Exception):
            self._ray.kill(handle.actor)
        await self._finish(handle)
        self._refill()

    async def _finish(self, handle: RayReplicaHandle) -> None:
        handle.exit_time = time.time()
        handle.exited = True
        self.token_file(handle.id).unlink(missing_ok=True)
        self._handles.pop(handle.id, None)
        handle._done.set()
        self._on_change(handle)

    async def _follow_log(self, handle: RayReplicaHandle) -> None:
        """Keep the controller's copy of the replica's log (log_dir/<id>.log) up to date."""
        while True:
            with contextlib.suppress(self.ray_error):
                await self._sync_log(handle)
            await asyncio.sleep(LOG_SYNC_SECONDS)

    async def _sync_log(self, handle: RayReplicaHandle) -> None:
        """Append what the node's log has beyond the controller's copy (a bounded read at a time)."""
        assert handle.log_path is not None
        while True:
            offset = handle.log_path.stat().st_size if handle.log_path.exists() else 0
            data = await handle.actor.read_log_from.remote(offset, LOG_CHUNK_BYTES)
            if not data:
                return
            await asyncio.to_thread(_append, handle.log_path, data)
            if len(data) < LOG_CHUNK_BYTES:
                return

    async def _copy_log(self, handle: RayReplicaHandle) -> None:
        """The rest of the replica's log onto the controller's machine (the node's copy is then removed)."""
        await self._sync_log(handle)
        await handle.actor.forget.remote()

    async def _watch_startup(self, handle: RayReplicaHandle) -> None:
        known = ""
        while not handle.exited:
            status = await handle.actor.wait_state.remote(known, STATE_WAIT_SECONDS)
            if status["exited"]:
                return
            state = status["state"]
            handle.host, handle.node_id = status["host"], status["node_id"]
            if handle.pid is None:
                handle.pid = status["pid"]
            if handle.observe_ports(state):
                if handle.phase is ReplicaPhase.STARTING:
                    handle.phase = ReplicaPhase.LOADING
                    self._on_change(handle)
            phase = state.get("phase", "")
            if phase == "ready" and handle.port:
                if await health_serving(handle.address):
                    if handle.phase is ReplicaPhase.LOADING:
                        handle.phase = ReplicaPhase.READY
                        handle.ready_time = time.time()
                        self._on_change(handle)
                    # Only now: a new Ray worker (a second of CPU) would slow this replica's start.
                    self._refill()
                    return
                known = ""  # not serving yet: ask again at once
                await asyncio.sleep(0.01)
                continue
            if phase == "failed":
                handle.load_error = load_error_of(state)
                return
            known = phase


def _append(path: pathlib.Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def _tar(package_dir: pathlib.Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        tar.add(package_dir, arcname=".")
    return buffer.getvalue()
