"""Whom a replica runs as on a Ray node (controller/ray_supervisor.py's _user_for): the local
runtime's rule (controller/isolation.py), with the node's Ray worker in the controller's
place. The supervisor class is plain Python; these call it without Ray, as root and as an
unprivileged user (a real process of another uid). tests/test_ray_runtime.py checks the
replicas' uids on a real cluster."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from controller.isolation import ReplicaUser, ReplicaUserError
from controller.ray_supervisor import ReplicaSupervisor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change users")

AUTO = {"replica_user": "auto", "uid_range": [260_100, 260_199], "uid": 260_107, "gid": 260_107}


@pytest.fixture
def node_tmp(monkeypatch):
    """A temporary directory other users may enter (as /tmp is), for the node's cache."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="slipway-node-users-", dir="/tmp"))
    root.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def log_of(supervisor: ReplicaSupervisor) -> str:
    return supervisor.log_path.read_text() if supervisor.log_path.exists() else ""


def test_a_root_worker_runs_the_replica_as_the_models_user(node_tmp):
    supervisor = ReplicaSupervisor("ns-users", "rusers1")
    assert supervisor._user_for(AUTO, sys.executable) == ReplicaUser(260_107, 260_107)
    assert supervisor._user_for(None, sys.executable) is None  # --replica-user controller
    assert log_of(supervisor) == ""


def test_a_node_cache_other_users_cannot_enter_falls_back_to_the_workers_user(node_tmp):
    node_tmp.chmod(0o700)
    supervisor = ReplicaSupervisor("ns-users", "rusers2")
    assert supervisor._user_for(AUTO, sys.executable) is None
    assert "runs as the Ray worker's user (uid 0)" in log_of(supervisor)
    assert f"other users cannot enter {node_tmp}" in log_of(supervisor)


def test_a_named_user_is_looked_up_on_the_node(node_tmp):
    supervisor = ReplicaSupervisor("ns-users", "rusers3")
    named = {"replica_user": "nobody", "uid_range": AUTO["uid_range"]}
    assert supervisor._user_for(named, sys.executable) == ReplicaUser(65534, 65534)
    with pytest.raises(ReplicaUserError, match="no such user"):
        supervisor._user_for({**named, "replica_user": "no-such-user-here"}, sys.executable)


AS_WORKER = """
import json, sys
from controller.ray_supervisor import ReplicaSupervisor
supervisor = ReplicaSupervisor("ns-users", "rusers4")
user = supervisor._user_for(json.loads(sys.argv[1]), sys.executable)
print(json.dumps({"user": user and user.uid, "log": supervisor.log_path.read_text()}))
"""


def test_a_worker_that_is_not_root_runs_replicas_as_itself_and_says_so(node_tmp):
    home = node_tmp / "nobody"
    home.mkdir()
    os.chown(home, 65534, 65534)
    done = subprocess.run(
        [sys.executable, "-c", AS_WORKER, json.dumps(AUTO)],
        capture_output=True,
        text=True,
        timeout=60,
        user=65534,
        group=65534,
        extra_groups=[],
        env={**os.environ, "TMPDIR": str(home)},
        cwd=pathlib.Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["user"] is None
    assert "runs as the Ray worker's user (uid 65534)" in found["log"] and "not running as root" in found["log"]
