"""File modes of the data directory: everything the controller writes is readable only by
its own user, whatever the umask it was started with.

Replicas that run as other users (controller/isolation.py) reach only what is granted to
them: a traversable (not listable) data directory, their own sandbox, and the built Python
environments, which hold public packages only.
"""

from __future__ import annotations

import os
import pathlib
import stat

PRIVATE_UMASK = 0o077
PRIVATE_DIR = 0o700
# Traversable by the replica users, listable by nobody else: names below it are not secret,
# every entry has its own private mode.
TRAVERSABLE_DIR = 0o711


def make_private(data_dir: pathlib.Path, traversable: bool) -> None:
    """Set the process umask so every later file is private, create `data_dir` and take
    group and other permissions off everything already in it (a data dir written by an
    older version, or under a looser umask). `traversable`: replicas run as other users."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)  # under the operator's umask: only the data dir is ours
    os.umask(PRIVATE_UMASK)
    data_dir.mkdir(exist_ok=True)
    data_dir.chmod(TRAVERSABLE_DIR if traversable else PRIVATE_DIR)
    for entry in data_dir.iterdir():
        tighten(entry)


def tighten(path: pathlib.Path) -> None:
    """Remove group and other permissions from `path` and, for a directory, everything in
    it owned by the controller's user (a replica's sandbox belongs to the replica's user and
    is left as it is); symbolic links are not followed."""
    me = os.geteuid()
    for item in _walk(path):
        info = item.lstat()
        if stat.S_ISLNK(info.st_mode) or info.st_uid != me:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            item.chmod(mode & ~0o077)


def share_read_only(path: pathlib.Path) -> None:
    """Let every user read `path` and its tree, and enter and run what its owner can."""
    for item in _walk(path):
        info = item.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = stat.S_IMODE(info.st_mode)
        execute = 0o111 if mode & stat.S_IXUSR else 0
        item.chmod((mode & ~0o022) | 0o444 | execute)


def _walk(path: pathlib.Path):
    yield path
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                yield pathlib.Path(root, name)
