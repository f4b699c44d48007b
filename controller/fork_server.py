"""The fork server's client: one `python -m replica.forkserver` per interpreter, from which
the local runtime forks replicas (see replica/forkserver.py), and the exit watch of a
process that is not our child."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Coroutine

from controller.isolation import ReplicaUser
from replica.package import without_secrets

POLL_SECONDS = 0.01
ADOPTED_POLL_SECONDS = 0.2
FORKSERVER_START_SECONDS = 30.0


class ForkServer:
    """A `python -m replica.forkserver` process for one interpreter (see replica/forkserver.py)."""

    def __init__(self, python: str, run_dir: pathlib.Path, log_path: pathlib.Path) -> None:
        self.python = python
        self.socket = run_dir / f"forkserver-{hashlib.sha256(python.encode()).hexdigest()[:10]}.sock"
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        # Write end of the server's lifeline (see replica/forkserver.py): held open for as
        # long as this controller lives, never inherited by any child.
        self._lifeline: int | None = None
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    async def ensure_started(self) -> None:
        async with self._starting:
            if self.pid is not None and self.socket.exists():
                return
            self.socket.unlink(missing_ok=True)
            self._close_lifeline()
            lifeline_read, self._lifeline = os.pipe()
            try:
                with self.log_path.open("ab") as log_file:
                    self.process = await asyncio.create_subprocess_exec(
                        self.python,
                        "-m",
                        "replica.forkserver",
                        "--socket",
                        str(self.socket),
                        "--lifeline-fd",
                        str(lifeline_read),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=log_file,
                        start_new_session=True,
                        env=without_secrets(os.environ),
                        pass_fds=(lifeline_read,),
                    )
            finally:
                os.close(lifeline_read)
            deadline = time.monotonic() + FORKSERVER_START_SECONDS
            while not self.socket.exists():
                if self.process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fork server for {self.python} did not start (see {self.log_path})")
                await asyncio.sleep(POLL_SECONDS)

    async def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        log_path: pathlib.Path,
        name: str,
        user: ReplicaUser | None = None,
        cwd: pathlib.Path | None = None,
        die_with_server: bool = False,
    ) -> tuple[int, Coroutine[None, None, int | None]]:
        """Fork a replica (as `user`, in `cwd`): its PID, and a coroutine that ends with its exit code.
        With `die_with_server`, the replica is killed when the server exits."""
        await self.ensure_started()
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            request: dict = {"argv": argv, "env": env, "log": str(log_path), "name": name}
            if user is not None:
                request.update(uid=user.uid, gid=user.gid, cwd=str(cwd))
            if die_with_server:
                request["die_with_server"] = True
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            pid = int(json.loads(await reader.readline())["pid"])
        except BaseException:
            writer.close()
            raise
        return pid, self._exit_code(pid, reader, writer)

    @staticmethod
    async def _exit_code(pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int | None:
        """The exit code the server reports when it reaps the replica; if the server goes
        first, the replica lives on unreaped by us: watch its PID (exit code unknown)."""
        try:
            line = await reader.readline()
        finally:
            writer.close()
        if line:
            return int(json.loads(line)["exit"])
        return await wait_for_pid_exit(pid)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        self._close_lifeline()

    def _close_lifeline(self) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def wait_for_pid_exit(pid: int) -> int | None:
    """Exit watch for a process that is not our child (forked by a fork server, or adopted).

    A pidfd becomes readable when the process exits; where there is none, poll.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        loop.add_reader(pidfd, _settle, gone)
        try:
            await gone
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return None
    while True:
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] == "Z":
                return None
        except OSError:
            return None
        await asyncio.sleep(ADOPTED_POLL_SECONDS)
