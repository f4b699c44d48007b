"""What an isolated environment is: its key and requirement lines (pure, but for
reading the package's config), and the tools a build uses (uv, the model server's
import paths). Building it is controller/builds.py's job.

The key is a hash of the normalised requirement lines, the interpreter and the paths
the model server is imported from, so every package with the same requirements
shares one environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import site
import sys
from dataclasses import dataclass

from replica.package import load_package_config, read_requirements

# Bumped when the layout of an environment changes, so that old ones are not reused.
FORMAT = 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


class BuildError(Exception):
    """A build failed; the message ends with the tail of the installer's output."""


@dataclass(frozen=True)
class EnvironmentSpec:
    key: str
    requirements: tuple[str, ...]
    # Where relative paths in requirement lines resolve (the package directory).
    workdir: pathlib.Path


def environment_spec(
    package_dir: pathlib.Path, python: str, paths: list[str], digest: str = ""
) -> EnvironmentSpec | None:
    """The environment a package needs; None when it has no requirements.
    Raises BuildError when its requirements cannot be read."""
    try:
        config = load_package_config(package_dir)
        lines = read_requirements(config)
    except ValueError as exc:
        raise BuildError(f"cannot read the package's requirements: {exc}") from None
    requirements = tuple(sorted({normalise_requirement(line) for line in lines}))
    if not requirements:
        return None
    identity = {
        "format": FORMAT,
        "python": os.path.realpath(python),
        "version": sys.version,
        "runtime_paths": paths,
        "requirements": requirements,
    }
    if any(_local_path(line) for line in requirements):
        identity["package"] = digest or str(package_dir)  # local paths: their content is the package's
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return EnvironmentSpec(key, requirements, pathlib.Path(package_dir))


def plural(count: int) -> str:
    return f"{count} requirement{'' if count == 1 else 's'}"


def normalise_requirement(line: str) -> str:
    """One spelling per requirement, so that `Six == 1.16` and `six==1.16` share an
    environment: the project name canonicalised (PEP 503), no blanks in the name and
    version part, blanks collapsed in the environment marker."""
    line = " ".join(line.split())
    if line.startswith("-") or _local_path(line):
        return line
    requirement, _, marker = line.partition(";")
    requirement = "".join(requirement.split())
    match = NAME.match(requirement)
    if match:
        requirement = re.sub(r"[-_.]+", "-", match[0]).lower() + requirement[match.end() :]
    marker = marker.strip()
    return f"{requirement} ; {marker}" if marker else requirement


def runtime_paths() -> list[str]:
    """Where the model server is imported from: the controller's site-packages and the
    directory holding the `replica` package (the source tree or an install)."""
    import replica

    paths = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        paths.append(site.getusersitepackages())
    paths.append(str(pathlib.Path(replica.__file__).resolve().parent.parent))
    seen: list[str] = []
    for path in paths:
        path = os.path.realpath(path)
        if path not in seen and os.path.isdir(path):
            seen.append(path)
    return seen


def uv_command() -> list[str]:
    try:
        import uv

        return [uv.find_uv_bin()]
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return [found]
        raise BuildError("uv is not installed: install the `uv` package into the controller's environment") from None


def _local_path(line: str) -> bool:
    target = line.split(None, 1)[-1] if line.startswith(("-e ", "--editable ")) else line
    return target.startswith((".", "/", "file:"))
