"""Shipping built environments to Ray nodes (controller/ray_environments.py), without Ray:
a real uv virtualenv packed, unpacked at another path and run there; the bounds and the
refusals. The end-to-end path (a replica on node 2 of a Ray cluster) is in
tests/test_ray_runtime.py."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys
import tarfile

import pytest

from controller.environment_specs import runtime_paths, uv_command
from controller.ray_environments import (
    NODE_MARKER,
    EnvironmentShipError,
    has_environment,
    pack_environment,
    unpack_environment,
)

KEY = "0123456789abcdef" * 4


@pytest.fixture
def built(tmp_path) -> pathlib.Path:
    env = tmp_path / "controller" / "envs" / KEY
    subprocess.run([*uv_command(), "venv", "-q", "--relocatable", "--python", sys.executable, str(env)], check=True)
    return env


def test_an_environment_unpacked_elsewhere_runs_the_model_server_there(built, tmp_path):
    node = tmp_path / "node"
    assert not has_environment(node, KEY)
    env = unpack_environment(node, KEY, pack_environment(built), runtime_paths())
    assert env == node / "envs" / KEY and has_environment(node, KEY) and (env / NODE_MARKER).is_file()
    ran = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import sys, replica.server; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout.strip() == str(env)  # its own prefix, not the controller's copy's
    # A second unpack of the same key keeps the first (once per node and key).
    assert unpack_environment(node, KEY, b"not even a tar", runtime_paths()) == env


def test_an_environment_over_the_limit_is_refused_with_its_size(built):
    (built / "big.bin").write_bytes(b"x" * 200_000)
    with pytest.raises(EnvironmentShipError, match=r"MiB, above the \d+ MiB that are shipped to a Ray node"):
        pack_environment(built, max_bytes=100_000)


def test_another_python_version_is_refused(built, tmp_path):
    config = built / "pyvenv.cfg"
    config.write_text(config.read_text().replace("version_info = ", "version_info = 2.7.0 #"))
    with pytest.raises(EnvironmentShipError, match="built for Python 2.7; this Ray node runs Python"):
        unpack_environment(tmp_path / "node", KEY, pack_environment(built), runtime_paths())
    assert not has_environment(tmp_path / "node", KEY)
    assert [p for p in (tmp_path / "node" / "envs").iterdir()] == []  # no half-unpacked left-over


def test_members_outside_the_tree_and_absolute_links_are_not_unpacked(built, tmp_path):
    with tarfile.open(fileobj=io.BytesIO(pack_environment(built)), mode="r:") as original:
        members = [(m, original.extractfile(m).read() if m.isfile() else None) for m in original.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
        escape = tarfile.TarInfo("../escaped.txt")
        escape.size = 2
        tar.addfile(escape, io.BytesIO(b"no"))
        link = tarfile.TarInfo("lib/etc-passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    env = unpack_environment(tmp_path / "node", KEY, out.getvalue(), runtime_paths())
    assert not (tmp_path / "node" / "envs" / "escaped.txt").exists()
    assert not (env / "lib" / "etc-passwd").is_symlink()
    # The interpreter link is this node's own, re-made (the archive's absolute one is not taken).
    assert (env / "bin" / "python").resolve() == pathlib.Path(sys._base_executable).resolve()
