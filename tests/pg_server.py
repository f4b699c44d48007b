"""A throwaway PostgreSQL server for the tests and benchmarks: `initdb` in a temporary
directory, `pg_ctl start` listening on a Unix socket in that directory only (no TCP port
to collide with anything else on the machine), `stop()` stops it and removes the
directory. As root, the server runs as the `postgres` user (PostgreSQL refuses root).

    server = PostgresServer.start()
    url = server.create_database("t1")        # postgresql://postgres@/t1?host=/tmp/…
    server.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg

T = TypeVar("T")
# Only names the socket file (.s.PGSQL.5432) in the server's own directory.
SOCKET_PORT = 5432
# Debian's layout first (/usr/lib/postgresql/<version>/bin, newest first), then the PATH.
BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)


class Unavailable(Exception):
    """No PostgreSQL server can be run here (the message says why)."""


def find_bin_dir() -> pathlib.Path | None:
    for candidate in BIN_DIRS:
        if all(os.access(f"{candidate}/{tool}", os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return pathlib.Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return pathlib.Path(os.path.realpath(initdb)).parent
    return None


def run_sync(awaitable: Awaitable[T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop."""

    async def wrapped() -> T:
        return await awaitable

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wrapped()).result()


class PostgresServer:
    def __init__(self, root: pathlib.Path, bin_dir: pathlib.Path, run_as: list[str]) -> None:
        self.root = root
        self.bin_dir = bin_dir
        self._run_as = run_as
        self._options = ""

    @classmethod
    def start(cls, durable: bool = False) -> PostgresServer:
        """`durable=False` (tests) turns fsync off; benchmarks keep PostgreSQL's defaults."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise Unavailable(
                "no PostgreSQL binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on PATH "
                "(`make test` installs Debian's postgresql package when it can)"
            )
        run_as: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no `postgres` user to run the server as") from None
            run_as = ["runuser", "-u", "postgres", "--"]
        root = pathlib.Path(tempfile.mkdtemp(prefix="slipway-pg-"))
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        server = cls(root, bin_dir, run_as)
        try:
            server._run("initdb", "-D", str(root / "data"), "--auth=trust", "--username=postgres")
            settings = [
                "listen_addresses=''",
                f"unix_socket_directories='{root}'",
                f"port={SOCKET_PORT}",
                "max_connections=300",
                "shared_buffers=32MB",
            ]
            if not durable:
                settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
            server._options = " ".join(f"-c {setting}" for setting in settings)
            server._pg_ctl("start")
        except BaseException:
            server._remove()
            raise
        return server

    def _pg_ctl(self, action: str) -> None:
        data, log = str(self.root / "data"), str(self.root / "server.log")
        self._run("pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-m", "fast", "-o", self._options, action)

    def restart(self) -> None:
        """Stop the server (closing every connection) and start it again."""
        self._pg_ctl("restart")

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._run_as, str(self.bin_dir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise Unavailable(
                f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}\n{tail}"
            )

    def version(self) -> str:
        done = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False
        )
        return done.stdout.strip().replace("postgres (PostgreSQL) ", "PostgreSQL ") or "PostgreSQL (version unknown)"

    def pid(self) -> int:
        """The postmaster's process ID (its sessions are its children)."""
        return int((self.root / "data" / "postmaster.pid").read_text().split()[0])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}&port={SOCKET_PORT}"

    async def execute(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.url())
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def create_database(self, name: str, template: str = "template0") -> str:
        """A new empty database (a copy of `template`); returns its URL."""
        run_sync(self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY'))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        run_sync(self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
