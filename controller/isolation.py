"""Which user a replica runs as, and what that user may read.

A model is untrusted code. When the controller runs as root, each model's replicas run as
a user of their own: uid (and gid) `first_uid + the model's number`, so two models never
share a uid and neither can read the other's files or /proc/PID/environ, nor the
controller's. (Replicas also make themselves non-dumpable: see replica/main.py.) That user
reaches only:

- its sandbox, `<data_dir>/sandboxes/<uid>/`: private copies of the packages its replicas
  run (a stored package may be shared by several models, so it is copied, never granted);
- its replica's own directory under `run/` (the state file);
- the built Python environments (public packages only) and the interpreter.

The log is opened by the controller's side before the user changes, so the model can
write it but not read another's. A controller that is not root cannot change users:
replicas then run as the controller's own user and isolation between models is only that
of the process (documented in the README's Security section).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass

log = logging.getLogger("slipway.isolation")

DEFAULT_UID_RANGE = (200_000, 299_999)
AUTO = "auto"
# Run replicas as the controller's own user (no isolation between models).
CONTROLLER_USER = "controller"


class ReplicaUserError(ValueError):
    """Replicas cannot run as the user asked for (the controller refuses to start)."""


@dataclass(frozen=True)
class ReplicaUser:
    uid: int
    gid: int


@dataclass(frozen=True)
class ReplicaUsers:
    """Per-model users (`first_uid`..`last_uid`), or one `shared` user for every replica."""

    first_uid: int = DEFAULT_UID_RANGE[0]
    last_uid: int = DEFAULT_UID_RANGE[1]
    shared: ReplicaUser | None = None

    def for_model(self, model_number: int) -> ReplicaUser:
        """The user of the model with this (never reused, from 1) number."""
        if self.shared is not None:
            return self.shared
        uid = self.first_uid + model_number - 1
        if uid > self.last_uid:
            raise RuntimeError(
                f"model number {model_number} is past the replica uid range {self.first_uid}-{self.last_uid}"
            )
        return ReplicaUser(uid, uid)


def parse_uid_range(text: str) -> tuple[int, int]:
    """'FIRST-LAST' as two uids; raise ValueError naming the problem."""
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"replica uid range must be FIRST-LAST, got {text!r}")
    low, high = int(first), int(last)
    if not 1 <= low <= high < 2**32 - 1:
        raise ValueError(f"replica uid range {text!r} must be ascending uids above 0")
    return low, high


def resolve_replica_users(
    replica_user: str,
    uid_range: tuple[int, int],
    python: str,
    data_dir: pathlib.Path,
    notes: list[str] | None = None,
) -> ReplicaUsers | None:
    """The users replicas run as; None: the controller's own.

    `replica_user`: `auto` (per-model uids from `uid_range` when root), `controller`, or a
    user name or uid that every replica shares. Other users must be able to run `python`
    and enter `data_dir`'s parents: under `auto`, replicas otherwise run as the controller's
    user (warned about loudly); asked for by name, the start is refused. Raise ReplicaUserError
    for a user that does not exist or a change of user a non-root controller cannot make.
    `notes` gets why `auto` fell back to the controller's user, when it did.

    The same rule decides on a Ray node (controller/ray_supervisor.py), where "the
    controller" is the Ray worker that starts the replica and `data_dir` its node's cache.
    """
    if replica_user == CONTROLLER_USER:
        return None
    root = os.geteuid() == 0
    if replica_user == AUTO and not root:
        if notes is not None:
            notes.append(f"not running as root (uid {os.geteuid()}), so it cannot change users")
        return None
    if not root:
        raise ReplicaUserError(f"--replica-user {replica_user}: only a controller running as root can change users")
    if replica_user == AUTO:
        users = ReplicaUsers(*uid_range)
    else:
        try:
            entry = pwd.getpwuid(int(replica_user)) if replica_user.isdigit() else pwd.getpwnam(replica_user)
        except KeyError:
            raise ReplicaUserError(f"--replica-user {replica_user}: no such user") from None
        if entry.pw_uid == 0:
            raise ReplicaUserError(f"--replica-user {replica_user} is root: replicas must run unprivileged")
        users = ReplicaUsers(shared=ReplicaUser(entry.pw_uid, entry.pw_gid))
    closed = unreachable_path(python) or _closed_parent(data_dir.resolve().parent)
    if closed is None:
        return users
    problem = (
        f"other users cannot enter {closed}, so replicas running as them could not reach the interpreter "
        f"{python} or the data directory {data_dir}; install Python where every user can read it "
        "(--replica-python) and keep the data directory under directories others may enter"
    )
    if replica_user != AUTO:
        raise ReplicaUserError(f"--replica-user {replica_user}: {problem}")
    log.warning("REPLICAS RUN AS THE CONTROLLER'S USER (root), not isolated from each other: %s", problem)
    if notes is not None:
        notes.append(problem)
    return None


def unreachable_path(python: str) -> pathlib.Path | None:
    """The first directory on the way to the interpreter or its standard library that other
    users cannot enter, or None when they can run it."""
    if python == sys.executable:
        places = [sys.executable, os.path.dirname(os.__file__)]
    else:
        asked = subprocess.run(
            [python, "-c", "import os, sys; print(sys.executable); print(os.path.dirname(os.__file__))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if asked.returncode != 0:
            raise ReplicaUserError(f"the replica interpreter {python} does not run: {asked.stderr.strip()[-300:]}")
        places = asked.stdout.split("\n")[:2]
    for place in places:
        closed = _closed_parent(pathlib.Path(place).resolve())
        if closed is not None:
            return closed
    return None


def _closed_parent(target: pathlib.Path) -> pathlib.Path | None:
    """The first of `target` and its parents (from /) that other users cannot enter."""
    for directory in (*reversed(target.parents), target):
        if directory.is_dir() and not stat.S_IMODE(directory.stat().st_mode) & stat.S_IXOTH:
            return directory
    return None


class Sandboxes:
    """Per-user copies of packages, under `root` (traversable, not listable)."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o711)

    def home(self, user: ReplicaUser) -> pathlib.Path:
        home = self.root / str(user.uid)
        try:
            home.mkdir(mode=0o700)
        except FileExistsError:
            return home  # made before, or by a replica of the same model starting at the same time
        os.chown(home, user.uid, user.gid)
        return home

    def package(self, user: ReplicaUser, package_dir: pathlib.Path) -> pathlib.Path:
        """The user's own copy of a stored package (packages never change: copied once; two
        replicas starting together each copy aside, and the first rename wins)."""
        copy = self.home(user) / package_dir.name
        if copy.is_dir():
            return copy
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{package_dir.name[:12]}-", dir=copy.parent))
        try:
            shutil.copytree(package_dir, staging / "tree", symlinks=True)
            give(staging / "tree", user)
            with contextlib.suppress(OSError):  # another replica's copy is in place already
                os.rename(staging / "tree", copy)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not copy.is_dir():
            raise RuntimeError(f"could not copy package {package_dir.name[:12]} for uid {user.uid}")
        return copy

    def copies_except(self, keep: set[str]) -> list[pathlib.Path]:
        """The package copies whose digest is not in `keep` (garbage once the package is)."""
        return [
            copy
            for home in self.root.iterdir()
            for copy in home.iterdir()
            if copy.name not in keep and not copy.name.startswith(".tmp-")  # a copy being made
        ]


def give(path: pathlib.Path, user: ReplicaUser) -> None:
    """Make `path` and its tree belong to `user` (symbolic links themselves, not followed)."""
    os.chown(path, user.uid, user.gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)
