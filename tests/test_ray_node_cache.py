"""The bounded node caches of the Ray runtime (controller/ray_node_cache.py): entries that
running replicas hold stay, the least recently used of the others go once the cache is
over its bound, and a replica taking an entry while a prune removes it gets it whole or
not at all. Real files, real flock locks, a second process as the holder; no Ray."""

from __future__ import annotations

import fcntl
import os
import pathlib
import subprocess
import sys
import threading
import time

from controller.ray_node_cache import Entry, NodeCache, eviction_order


def entry(cache: NodeCache, kind: str, name: str, size: int, used: float) -> pathlib.Path:
    path = cache.root / kind / name
    path.mkdir(parents=True)
    (path / "data").write_bytes(b"x" * size)
    os.utime(path, (used, used))
    return path


def test_eviction_order_is_least_recently_used_first_and_only_when_over():
    old, mid, new = Entry("packages", "a", 10, 1.0), Entry("envs", "b", 10, 2.0), Entry("packages", "c", 10, 3.0)
    assert eviction_order([new, old, mid], 30) == (0, [])
    assert eviction_order([new, old, mid], 25) == (5, [old, mid, new])


def test_prune_removes_unused_entries_oldest_first_with_their_user_copies(tmp_path):
    cache = NodeCache(tmp_path, max_bytes=250)
    now = time.time()
    oldest = entry(cache, "packages", "a" * 64, 100, now - 300)
    copy = tmp_path / "sandboxes" / "260000" / oldest.name
    copy.mkdir(parents=True)
    (copy / "data").write_bytes(b"x" * 100)
    held = entry(cache, "envs", "b" * 32, 100, now - 200)
    newer = entry(cache, "packages", "c" * 64, 100, now - 100)
    newest = entry(cache, "envs", "d" * 32, 100, now)
    fd = cache.hold("envs", held.name)  # a running replica's environment, though old

    removed = cache.prune()  # 500 bytes (the copy counts with its package) over a bound of 250
    assert [e.name for e in removed] == [oldest.name, newer.name]
    assert not oldest.exists() and not copy.exists() and not newer.exists()
    assert held.is_dir() and newest.is_dir()
    assert not (tmp_path / "locks" / f"packages.{oldest.name}.lock").exists()
    assert cache.prune() == []  # within the bound now
    cache.release(fd)
    cache.max_bytes = 0
    assert {e.name for e in cache.prune()} == {held.name, newest.name}
    assert list((tmp_path / "packages").iterdir()) == [] and list((tmp_path / "envs").iterdir()) == []


def test_taking_an_entry_makes_it_recently_used(tmp_path):
    cache = NodeCache(tmp_path, max_bytes=100)
    now = time.time()
    first = entry(cache, "packages", "a" * 64, 100, now - 100)
    second = entry(cache, "packages", "b" * 64, 100, now - 50)
    cache.release(cache.hold("packages", first.name))  # a replica started from it and ended
    assert [e.name for e in cache.prune()] == [second.name]
    assert first.is_dir()


HOLDER = """
import sys, time
from controller.ray_node_cache import NodeCache
cache = NodeCache(__import__("pathlib").Path(sys.argv[1]))
cache.hold("packages", sys.argv[2])
print("held", flush=True)
sys.stdin.read()
"""


def test_an_entry_held_by_another_process_survives_until_that_process_is_gone(tmp_path):
    cache = NodeCache(tmp_path, max_bytes=0)
    path = entry(cache, "packages", "a" * 64, 10, time.time())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), path.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=pathlib.Path(__file__).parent.parent,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert cache.prune() == [] and path.is_dir()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder exits: the kernel drops its lock
        holder.wait(10)
    assert [e.name for e in cache.prune()] == [path.name]


def test_a_replica_taking_an_entry_during_its_removal_waits_and_then_finds_it_gone(tmp_path):
    cache = NodeCache(tmp_path, max_bytes=0)
    path = entry(cache, "packages", "a" * 64, 10, time.time())
    lock = tmp_path / "locks" / f"packages.{path.name}.lock"
    pruning = cache._locked("packages", path.name, fcntl.LOCK_EX)  # a prune, midway
    assert pruning is not None
    taken: list[int] = []
    taker = threading.Thread(target=lambda: taken.append(cache.hold("packages", path.name)))
    taker.start()
    taker.join(0.2)
    assert taker.is_alive() and taken == [], "took the entry while a prune was removing it"
    # The prune finishes: the entry and its lock file go, then the lock is released.
    (path / "data").unlink()
    path.rmdir()
    lock.unlink()
    os.close(pruning)
    taker.join(10)
    # It holds the lock file now in place (not the removed one) and sees no entry: it unpacks anew.
    assert os.fstat(taken[0]).st_ino == lock.stat().st_ino
    assert not path.exists()
    (path / "sub").mkdir(parents=True)
    assert cache.prune() == [] and path.is_dir()  # and what it unpacked is held
    cache.release(taken[0])
