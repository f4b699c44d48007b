"""The bounded caches of a Ray node: packages and environments unpacked under
<tmp>/slipway-ray/<namespace>/{packages,envs} (controller/ray_supervisor.py), with the
per-user copies of packages under sandboxes/<uid>/<digest> counted with their package.

Which entries are in use is what the node's supervisors hold: each supervisor takes a
shared lock (flock) on an entry's lock file, locks/<kind>.<name>.lock, before it looks
for the entry or unpacks it, and keeps it until its replica has exited (the kernel drops
it when the actor's process dies). After an unpack the cache is pruned: while the
entries' total size is over the bound, the least recently used entry (the last time a
supervisor took its lock) whose exclusive lock can be had at once — so no replica uses
it — is renamed aside and removed, with its lock file, while that lock is held. A replica
starting from the entry at the same moment waits for the lock, then finds the entry gone
and unpacks it again; a holder checks that the lock file it locked is still the one in
place (a removed lock file is no lock).

Ray-free and no asyncio: the supervisor calls these in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
import time
import uuid
from dataclasses import dataclass

# Packages and environments kept on a node beyond those of running replicas (8 GiB).
DEFAULT_NODE_CACHE_BYTES = 8 * 1024**3
KINDS = ("packages", "envs")
# Entries renamed aside for removal (a prune that died midway leaves these: removed by the next).
GONE_PREFIX = ".gone-"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    size: int
    used: float  # when a replica last took it (a time)


def eviction_order(entries: list[Entry], max_bytes: int) -> tuple[int, list[Entry]]:
    """How many bytes must go for the cache to fit `max_bytes`, and the entries in the
    order they are removed (least recently used first; the caller skips those in use)."""
    excess = sum(entry.size for entry in entries) - max_bytes
    if excess <= 0:
        return 0, []
    return excess, sorted(entries, key=lambda entry: (entry.used, entry.kind, entry.name))


def tree_size(path: pathlib.Path) -> int:
    """Bytes of the regular files under `path` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(root, name))
                if not os.path.islink(os.path.join(root, name)):
                    total += info.st_size
    return total


class NodeCache:
    def __init__(self, root: pathlib.Path, max_bytes: int = DEFAULT_NODE_CACHE_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.locks = root / "locks"
        self.locks.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _lock_path(self, kind: str, name: str) -> pathlib.Path:
        if kind not in KINDS or not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a node cache entry: {kind}/{name}")
        return self.locks / f"{kind}.{name}.lock"

    def _locked(self, kind: str, name: str, how: int) -> int | None:
        """An open descriptor of the entry's lock file, locked `how`; None when LOCK_NB said no."""
        path = self._lock_path(kind, name)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, how)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # locked a lock file a prune removed meanwhile: lock the one in place

    def hold(self, kind: str, name: str) -> int:
        """Mark the entry used (and recently) until `release`; waits while a prune removes it."""
        fd = self._locked(kind, name, fcntl.LOCK_SH)
        assert fd is not None
        os.utime(fd)
        return fd

    @staticmethod
    def release(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)

    def entries(self) -> list[Entry]:
        found = []
        for kind in KINDS:
            directory = self.root / kind
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                if path.name.startswith(".") or not path.is_dir():
                    continue  # being unpacked, or being removed
                size = tree_size(path) + sum(tree_size(copy) for copy in self._copies(kind, path.name))
                try:
                    used = os.stat(self._lock_path(kind, path.name)).st_mtime
                except FileNotFoundError:
                    used = path.stat().st_mtime
                found.append(Entry(kind, path.name, size, used))
        return found

    def _copies(self, kind: str, name: str) -> list[pathlib.Path]:
        """The per-user copies of a package (controller/isolation.py's Sandboxes)."""
        sandboxes = self.root / "sandboxes"
        if kind != "packages" or not sandboxes.is_dir():
            return []
        return [copy for home in sandboxes.iterdir() if (copy := home / name).is_dir()]

    def prune(self) -> list[Entry]:
        """Remove unused entries, least recently used first, until the cache fits its bound; what went."""
        self._remove_leftovers()
        excess, order = eviction_order(self.entries(), self.max_bytes)
        removed = []
        for entry in order:
            if excess <= 0:
                break
            fd = self._locked(entry.kind, entry.name, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is None:
                continue  # a replica on this node uses it
            try:
                for path in [self.root / entry.kind / entry.name, *self._copies(entry.kind, entry.name)]:
                    _remove(path)
                self._lock_path(entry.kind, entry.name).unlink(missing_ok=True)
            finally:
                os.close(fd)
            excess -= entry.size
            removed.append(entry)
        return removed

    def _remove_leftovers(self) -> None:
        sandboxes = self.root / "sandboxes"
        homes = list(sandboxes.iterdir()) if sandboxes.is_dir() else []
        for directory in [*(self.root / kind for kind in KINDS), *homes]:
            if directory.is_dir():
                for path in directory.glob(GONE_PREFIX + "*"):
                    shutil.rmtree(path, ignore_errors=True)


def _remove(path: pathlib.Path) -> None:
    """Rename aside first: a half-removed entry is never taken for a whole one."""
    aside = path.with_name(f"{GONE_PREFIX}{path.name[:12]}-{uuid.uuid4().hex[:8]}-{time.time_ns()}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)
