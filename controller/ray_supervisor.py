"""The Ray actor that owns one replica on the node Ray placed it on (controller/ray_runtime.py).

One named, detached actor per replica (name: the replica ID, namespace: the controller's),
so that it outlives the controller that created it and a restarted controller finds it by
name. The actor starts Slipway's own model server, `python -m replica`, as a child process
(its own session) with the same contract as the local runtime's replicas: a state file
with port and phase, SIGTERM drains, exit codes 3 (load failed) and 4 (unhealthy). The
child dies with the actor (PR_SET_PDEATHSIG), so a lost node or a killed actor leaves no
replica behind.

Packages come from the controller through Ray's object store as tar archives and are
unpacked once per node and digest under <tmp>/slipway-ray/<namespace>/packages/<digest>,
which is also the replica's --packages-root (live reload loads from there by digest).
Built requirements environments come the same way, once per node and environment key
(controller/ray_environments.py). Both caches are bounded: entries no running replica of
the node uses go, least recently used first, once they are over the operator's bound
(controller/ray_node_cache.py).

Replicas run as their model's user exactly as on the local runtime (controller/isolation.py,
the same rule): when the Ray worker is root, the replica runs as the uid the controller
chose for its model (or the one --replica-user names, looked up on the node), from its
own copy of the package (sandboxes/<uid>/<digest>), with its state file in a directory
of its own and its log opened for it; a worker that is not root runs replicas as itself
(the replica's log says so).

This module imports no Ray at the top: the runtime wraps the class with ray.remote, and
the nodes import it by name (Slipway is installed on every node).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

from controller.files import TRAVERSABLE_DIR
from controller.isolation import ReplicaUser, Sandboxes, resolve_replica_users
from controller.ray_node_cache import DEFAULT_NODE_CACHE_BYTES, NodeCache

POLL_SECONDS = 0.01
# Entries a development replica's reloads keep from the node cache's pruning (the newest).
RELOADS_HELD = 16
PR_SET_PDEATHSIG = 1
DIGEST_CHARS = frozenset("0123456789abcdef")


def node_root(namespace: str) -> pathlib.Path:
    return pathlib.Path(tempfile.gettempdir()) / "slipway-ray" / namespace


def unpack_package(root: pathlib.Path, digest: str, archive: bytes) -> pathlib.Path:
    """Unpack a package archive as root/packages/<digest> (atomically: a concurrent unpack
    of the same digest on this node wins or loses whole); modes of our own, never the archive's."""
    if len(digest) != 64 or not set(digest) <= DIGEST_CHARS:
        raise ValueError(f"not a package digest: {digest!r}")
    final = root / "packages" / digest
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=final.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar.getmembers():
                target = (staging / member.name).resolve()
                if not target.is_relative_to(staging.resolve()) or not (member.isfile() or member.isdir()):
                    continue  # the controller archives its own stored package: nothing else is expected
                if member.isdir():
                    target.mkdir(mode=0o700, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                target.chmod(0o600)
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _die_with_parent() -> None:
    """In the child before exec: its own session, and SIGKILL when the actor's thread dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ReplicaSupervisor:
    """An async actor: its methods run on one event loop (the thread the child is forked from)."""

    def __init__(self, namespace: str, replica_id: str = "") -> None:
        self.root = node_root(namespace)
        # <tmp>/slipway-ray: replica users pass through it to their own directories (not listable).
        self.root.parent.mkdir(exist_ok=True)
        if self.root.parent.stat().st_uid == os.geteuid():
            self.root.parent.chmod(TRAVERSABLE_DIR)  # whatever the worker's umask
        for name in ("packages", "run", "logs", "envs"):
            (self.root / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.replica_id = ""
        if replica_id:
            self._assign(replica_id)
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.exited = asyncio.Event()
        self.started = time.time()
        # A warm actor (of the runtime's pool) keeps a fork server that has imported the model
        # server, so that its replica starts in milliseconds rather than as a new interpreter.
        self._fork_server: Any = None
        self._preparing: asyncio.Task | None = None
        # The node cache's entries this replica uses (locks held until it is forgotten).
        self.cache = NodeCache(self.root, DEFAULT_NODE_CACHE_BYTES)
        self._holds: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self._pinned: set[tuple[str, str]] = set()
        self.user: ReplicaUser | None = None
        self.own_dir: pathlib.Path | None = None
        # The task that sets `exited`: held here, since the event loop keeps only a weak
        # reference to a task (Ray's own collector thread did collect an unheld one).
        self._watching: asyncio.Task | None = None

    def _assign(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.state_file = self.root / "run" / f"{replica_id}.json"
        self.log_path = self.root / "logs" / f"{replica_id}.log"

    async def prepare(self) -> None:
        """Start this actor's own fork server (it exits when the actor dies: its lifeline)."""
        if self._preparing is None:
            self._preparing = asyncio.get_running_loop().create_task(self._start_fork_server())
        await asyncio.shield(self._preparing)

    async def _start_fork_server(self) -> None:
        from controller.fork_server import ForkServer

        own = pathlib.Path(tempfile.mkdtemp(prefix="fs-", dir=self.root / "run"))
        server = ForkServer(sys.executable, own, own / "forkserver.log")
        await server.ensure_started()
        self._fork_server = server

    def _where(self) -> dict[str, Any]:
        import ray  # present on every node: this runs inside a Ray worker

        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "host": ray.util.get_node_ip_address()}

    async def _hold(self, kind: str, name: str, pinned: bool = False) -> None:
        """Keep the cache entry from being pruned while this replica may use it."""
        key = (kind, name)
        if key not in self._holds:
            self._holds[key] = await asyncio.to_thread(self.cache.hold, kind, name)
        self._holds.move_to_end(key)
        if pinned:
            self._pinned.add(key)
        loose = [k for k in self._holds if k not in self._pinned]
        for old in loose[:-RELOADS_HELD]:
            self.cache.release(self._holds.pop(old))

    def _release_all(self) -> None:
        for fd in self._holds.values():
            self.cache.release(fd)
        self._holds.clear()
        self._pinned.clear()

    async def _prune(self) -> None:
        """Keep the node's cache within its bound (a failure to is logged, never fails the start)."""
        try:
            removed = await asyncio.to_thread(self.cache.prune)
        except OSError as error:
            removed, note = [], f"slipway: node cache not pruned: {error}\n"
        else:
            names = ", ".join(f"{entry.kind}/{entry.name[:12]}" for entry in removed)
            note = f"slipway: node cache over {self.cache.max_bytes} bytes: removed {names} (unused)\n"
        if (removed or "not pruned" in note) and self.replica_id:
            with self.log_path.open("a") as log_file:
                log_file.write(note)

    async def put_package(self, digest: str, archive: list, pinned: bool = False) -> bool:
        """Unpack the package unless this node has it; `archive` is [ObjectRef] of its tar
        bytes (wrapped in a list, so Ray fetches it only when the node lacks the package).
        Held for this replica; with a replica user, copied for that user too (live reload
        loads it from there). Whether it had to be unpacked."""
        await self._hold("packages", digest, pinned)
        unpacked = False
        if not (self.root / "packages" / digest).is_dir():
            data = await archive[0]
            await asyncio.to_thread(unpack_package, self.root, digest, data)
            unpacked = True
        if self.user is not None:
            await asyncio.to_thread(
                Sandboxes(self.root / "sandboxes").package, self.user, self.root / "packages" / digest
            )
        if unpacked and not pinned:
            await self._prune()  # a live reload's package: the start prunes its own
        return unpacked

    async def put_environment(self, key: str, archive: list) -> tuple[str, bool]:
        """The interpreter of the built environment `key` on this node, and whether it had
        to be unpacked (False: an earlier replica on this node brought it)."""
        from controller.environment_specs import runtime_paths
        from controller.ray_environments import has_environment, node_env_dir, unpack_environment

        await self._hold("envs", key, pinned=True)
        if has_environment(self.root, key):
            return str(node_env_dir(self.root, key) / "bin" / "python"), False
        data = await archive[0]
        env = await asyncio.to_thread(unpack_environment, self.root, key, data, runtime_paths())
        return str(env / "bin" / "python"), True

    async def start(self, spec: dict[str, Any], archive: list, environment: list | None = None) -> dict[str, Any]:
        """Start the replica `spec["replica_id"]` from the stored package `spec["digest"]`
        (in the built environment `spec["env_key"]`, shipped as `environment`, if any);
        where it runs and its PID."""
        if self.pid is not None:
            return self.status_now()
        self._assign(spec["replica_id"])
        self.cache.max_bytes = int(spec.get("cache_bytes", DEFAULT_NODE_CACHE_BYTES))
        digest = spec["digest"]
        unpacked = await self.put_package(digest, archive, pinned=True)
        where = self._where()
        python = spec.get("python")
        if spec.get("env_key") and environment is not None:
            python, env_unpacked = await self.put_environment(spec["env_key"], environment)
            unpacked = unpacked or env_unpacked
            with self.log_path.open("a") as log_file:
                how = "unpacked on this node" if env_unpacked else "reused: already on this node"
                log_file.write(f"slipway: environment {spec['env_key'][:12]} {how} ({python})\n")
        if python and not os.access(python, os.X_OK):
            raise FileNotFoundError(f"the environment's interpreter {python} is not on node {where['node_id'][:12]}")
        package_dir, packages_root, home = self.root / "packages" / digest, self.root / "packages", None
        self.user = await asyncio.to_thread(self._user_for, spec.get("user"), python or sys.executable)
        if self.user is not None:
            package_dir, home = await asyncio.to_thread(self._sandbox, self.user, digest)
            packages_root = home
        if unpacked:
            await self._prune()
        args = [
            "--package",
            str(package_dir),
            "--state-file",
            str(self.state_file),
            "--replica-id",
            self.replica_id,
            "--host",
            where["host"],
            "--packages-root",
            str(packages_root),
            *spec["args"],
        ]
        variables = {**spec["environment"], **({"HOME": str(home)} if home else {})}
        self.state_file.unlink(missing_ok=True)
        if self._preparing is not None and python is None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._preparing)
        if self._fork_server is not None and python is None:
            from slipway.internal_auth import REPLICA_TOKEN_ENV

            self.pid, exited = await self._fork_server.spawn(
                args,
                {**variables, REPLICA_TOKEN_ENV: spec["token"]},
                self.log_path,
                self.replica_id,
                self.user,
                home,
                die_with_server=True,
            )
            self._watching = asyncio.get_running_loop().create_task(self._exit_of(exited))
        else:
            self._spawn([python or sys.executable, "-m", "replica", *args], spec["token"], variables, home)
            self._watching = asyncio.get_running_loop().create_task(self._reap())
        return {**where, "pid": self.pid}

    def _user_for(self, asked: dict[str, Any] | None, python: str) -> ReplicaUser | None:
        """Whom the replica runs as on this node, by the local runtime's rule (controller/isolation.py)
        with this worker in the controller's place; None: this worker's user (the log says why)."""
        if not asked:
            return None
        notes: list[str] = []
        first, last = (int(uid) for uid in asked["uid_range"])
        users = resolve_replica_users(asked["replica_user"], (first, last), python, self.root, notes)
        if users is None:
            with self.log_path.open("a") as log_file:
                log_file.write(
                    f"slipway: the replica runs as the Ray worker's user (uid {os.geteuid()}), "
                    f"not as its model's: {'; '.join(notes)}\n"
                )
            return None
        if users.shared is not None:
            return users.shared
        return ReplicaUser(int(asked["uid"]), int(asked["gid"]))

    def _sandbox(self, user: ReplicaUser, digest: str) -> tuple[pathlib.Path, pathlib.Path]:
        """The user's copy of the package and its home; its own directory for the state file.
        What it may enter: this node's directory and run/ (traversable, not listable), its
        home and state directory (its own), the environments (public packages, readable)."""
        for directory in (self.root, self.root / "run", self.root / "envs"):
            directory.chmod(TRAVERSABLE_DIR)
        sandboxes = Sandboxes(self.root / "sandboxes")
        home = sandboxes.home(user)
        package = sandboxes.package(user, self.root / "packages" / digest)
        own = self.root / "run" / self.replica_id
        own.mkdir(mode=0o700, exist_ok=True)
        os.chown(own, user.uid, user.gid)
        self.own_dir, self.state_file = own, own / "state.json"
        return package, home

    def _spawn(self, argv: list[str], token: str, variables: dict[str, str], home: pathlib.Path | None) -> None:
        """A new interpreter; its token comes through an inherited pipe."""
        token_read, token_write = os.pipe()
        as_user: dict[str, Any] = {}
        if self.user is not None:
            as_user = {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
        try:
            os.write(token_write, token.encode())
            os.close(token_write)
            with self.log_path.open("ab") as log_file:
                # Forked from this (the event loop's) thread: PR_SET_PDEATHSIG follows it.
                self.process = subprocess.Popen(
                    [*argv, "--token-fd", str(token_read)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    env={**os.environ, **variables},
                    pass_fds=(token_read,),
                    cwd=home or self.root,
                    # After the change of user (which would clear PR_SET_PDEATHSIG).
                    preexec_fn=_die_with_parent,
                    **as_user,
                )
        finally:
            os.close(token_read)
        self.pid = self.process.pid

    async def _exit_of(self, exited: Any) -> None:
        self.exit_code = await exited
        self.exited.set()

    async def _reap(self) -> None:
        assert self.process is not None
        while self.process.poll() is None:
            await asyncio.sleep(POLL_SECONDS * 5)
        self.exit_code = self.process.returncode
        self.exited.set()

    def status_now(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text()) if self.replica_id else {}
        except (OSError, ValueError):
            state = {}
        return {
            **self._where(),
            "pid": self.pid,
            "replica_id": self.replica_id,
            "state": state,
            "exited": self.exited.is_set(),
            "exit_code": self.exit_code,
            "actor_pid": os.getpid(),
        }

    async def status(self) -> dict[str, Any]:
        return self.status_now()

    async def wait_state(self, known: str, timeout: float) -> dict[str, Any]:
        """The status once the replica's phase is no longer `known` (or it exited), or after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status_now()
            phase = status["state"].get("phase", "")
            if phase != known or status["exited"] or time.monotonic() > deadline:
                return status
            await asyncio.sleep(POLL_SECONDS)

    async def wait_exit(self) -> int | None:
        await self.exited.wait()
        return self.exit_code

    async def signal(self, drain: bool) -> None:
        """SIGTERM (the replica drains), or SIGKILL of its process group."""
        if self.pid is None or self.exited.is_set():
            return
        with contextlib.suppress(ProcessLookupError):
            if drain:
                os.kill(self.pid, signal.SIGTERM)
            else:
                os.killpg(self.pid, signal.SIGKILL)

    async def read_log_from(self, offset: int, max_bytes: int) -> bytes:
        """Up to `max_bytes` of the replica's log from byte `offset` (the controller's copy follows it)."""
        if not self.replica_id:
            return b""
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except OSError:
            return b""

    async def read_log(self, max_bytes: int) -> bytes:
        """The last `max_bytes` of the replica's log."""
        if not self.replica_id:
            return b""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - max_bytes))
                return f.read(max_bytes)
        except OSError:
            return b""

    async def forget(self) -> None:
        """Remove the replica's files on this node (its log has been copied to the controller)."""
        await self.signal(drain=False)
        if self.replica_id:
            self.state_file.unlink(missing_ok=True)
            self.log_path.unlink(missing_ok=True)
            if self.own_dir is not None:
                shutil.rmtree(self.own_dir, ignore_errors=True)
        self._release_all()
        if self._fork_server is not None:
            await self._fork_server.stop()
