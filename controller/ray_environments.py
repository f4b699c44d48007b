"""Built requirements environments shipped to Ray nodes (no shared filesystem needed).

The controller builds a package's environment (controller/builds.py, uv) and packs it as
a tar archive, put into Ray's object store once per environment key (a hash of the
requirements). The node's supervisor (controller/ray_supervisor.py) unpacks it once per
node and key under <tmp>/slipway-ray/<namespace>/envs/<key>, atomically (a concurrent
unpack wins or loses whole); later replicas on that node reuse it, and the node's cache
bound removes those no replica uses (controller/ray_node_cache.py).

Why ship the built environment rather than rebuild it on the node: the node then needs
neither uv nor access to the package index, the replica runs with exactly the versions
the controller checked (the build ends by importing the model server), and one build
serves every node. Why a node-local path rather than the controller's: the environments
are made with `uv venv --relocatable` and are only ever run as `<env>/bin/python -m
replica`, where Python derives the prefix from where the interpreter is at run time; the
parts of a virtualenv that are not relocatable (console-script shebangs, `activate`) are
never used. Two things name the controller's machine, and the node rewrites both: the
`.pth` file that makes the model server importable (rewritten to the node's own Slipway
install) and the base interpreter `bin/python` links to (which must be the same Python
version on the node; else the start fails with a message saying so).

Pure functions, no Ray here.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile

from controller.files import share_read_only

# An environment larger than this is not shipped (the object store holds it while replicas start).
MAX_ENV_BYTES = 2 * 1024**3
ENVS_KEPT = 8
KEY_CHARS = frozenset("0123456789abcdef")
NODE_MARKER = "slipway-node-environment.json"


class EnvironmentShipError(Exception):
    """The environment cannot be shipped to, or used on, the node; the message says why."""


def environment_size(env_dir: pathlib.Path) -> int:
    total = 0
    for path in env_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def pack_environment(env_dir: pathlib.Path, max_bytes: int = MAX_ENV_BYTES) -> bytes:
    """The built environment as an uncompressed tar (symlinks kept as links, modes kept)."""
    size = environment_size(env_dir)
    if size > max_bytes:
        raise EnvironmentShipError(
            f"the environment {env_dir.name[:12]} is {size / 1024**2:.0f} MiB, above the "
            f"{max_bytes / 1024**2:.0f} MiB that are shipped to a Ray node; lower the requirements"
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as tar:
        tar.add(env_dir, arcname=".")
    return buffer.getvalue()


def _check_key(key: str) -> None:
    if len(key) < 16 or len(key) > 128 or not set(key) <= KEY_CHARS:
        raise ValueError(f"not an environment key: {key!r}")


def node_env_dir(root: pathlib.Path, key: str) -> pathlib.Path:
    _check_key(key)
    return root / "envs" / key


def has_environment(root: pathlib.Path, key: str) -> bool:
    return (node_env_dir(root, key) / NODE_MARKER).is_file()


def unpack_environment(root: pathlib.Path, key: str, archive: bytes, runtime_paths: list[str]) -> pathlib.Path:
    """Unpack an environment archive as root/envs/<key> and make it run on this node:
    its `.pth` names this node's model server paths, its interpreter link this node's
    Python. Atomic: the marker is written before the rename into place."""
    final = node_env_dir(root, key)
    if (final / NODE_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
    try:
        _extract(archive, staging)
        _relink_interpreter(staging)
        _rewrite_pth(staging, runtime_paths)
        (staging / NODE_MARKER).write_text(json.dumps({"key": key, "python": sys.version.split()[0]}))
        # Public packages only: readable by the replica users of this node (as builds/envs/ is).
        share_read_only(staging)
        try:
            staging.rename(final)
        except OSError:
            if not (final / NODE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _extract(archive: bytes, staging: pathlib.Path) -> None:
    """Regular files, directories, hard links and relative symbolic links inside the tree;
    nothing else (absolute links, such as the one to the base interpreter, are re-made by
    _relink_interpreter). Modes: the owner's bits, never group/other write or set-ID bits."""
    top = staging.resolve()

    def inside(name: str) -> pathlib.Path | None:
        target = (staging / name).resolve()
        return target if target.is_relative_to(top) else None

    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar.getmembers():
            target = inside(member.name)
            if target is None or target == top:
                continue
            if member.isdir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if member.issym():
                pointed = inside(os.path.join(os.path.dirname(member.name), member.linkname))
                if not os.path.isabs(member.linkname) and pointed is not None:
                    target.unlink(missing_ok=True)
                    target.symlink_to(member.linkname)
            elif member.islnk():
                source_path = inside(member.linkname)
                if source_path is not None and source_path.is_file():
                    shutil.copy2(source_path, target)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                target.chmod(member.mode & 0o755 | 0o600)


def _relink_interpreter(env: pathlib.Path) -> None:
    """bin/python* → this node's base interpreter, of the version the environment was built for."""
    config = env / "pyvenv.cfg"
    if not config.is_file():
        raise EnvironmentShipError("the shipped environment has no pyvenv.cfg")
    built_for = ""
    lines = config.read_text().splitlines()
    for line in lines:
        name, _, value = line.partition("=")
        if name.strip() in ("version_info", "version"):
            built_for = ".".join(value.strip().split(".")[:2])
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if built_for and built_for != here:
        raise EnvironmentShipError(
            f"the environment was built for Python {built_for}; this Ray node runs Python {here} "
            "(install the same Python version on every node)"
        )
    base = pathlib.Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    bin_dir = env / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "python3", f"python{here}"):
        link = bin_dir / name
        if link.is_symlink() or link.exists() or name == "python":
            link.unlink(missing_ok=True)
            link.symlink_to(base)
    config.write_text(
        "".join(
            (f"home = {base.parent}\n" if line.partition("=")[0].strip() == "home" else f"{line}\n") for line in lines
        )
    )


def _rewrite_pth(env: pathlib.Path, runtime_paths: list[str]) -> None:
    from controller.builds import PTH_NAME

    site_dirs = sorted(env.glob("lib/python*/site-packages"))
    if not site_dirs:
        raise EnvironmentShipError("the shipped environment has no site-packages directory")
    (site_dirs[0] / PTH_NAME).write_text(
        "# Slipway: this node's model server packages, after the environment's.\n"
        + "".join(f"import site; site.addsitedir({path!r})\n" for path in runtime_paths)
    )
