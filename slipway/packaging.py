"""Model package archives: a deterministic gzip tar of a package directory.

The same directory content always gives the same bytes (and so the same sha256),
whatever the file times, owners or the order the file system lists entries in:
entries are sorted, times are 0, owners are 0 with no names, modes are normalised
(0644, or 0755 for directories and executables) and the gzip header has no time
or file name. Paths in the archive are relative to the package root
(`config.yaml`, `model/model.py`, ...).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

from replica.package import bundled_external_dir, parse_config

CONFIG_FILE = "config.yaml"
# Read in this order; patterns of every file present are combined.
IGNORE_FILES = (".slipwayignore", ".trussignore", ".truss_ignore")
# Editors' swap, backup and lock files (vim, emacs, JetBrains; `4913` is vim's probe
# file): never part of a package, so a live-reload watcher never sends them either.
EDITOR_TEMP_FILES = ("*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913", "*___jb_tmp___", "*___jb_old___")
ALWAYS_IGNORED = ("__pycache__/", ".git/", "*.pyc", *EDITOR_TEMP_FILES)


class PackageError(Exception):
    """The directory is not a model package (or cannot be read)."""


def _package_dir(directory: Path | str) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise PackageError(f"{path}: not a directory")
    if not (path / CONFIG_FILE).is_file():
        raise PackageError(f"{path}: no {CONFIG_FILE} (not a model package directory)")
    return path


def load_ignore_patterns(directory: Path | str) -> list[str]:
    """The built-in patterns plus those of the package's ignore files.

    One fnmatch pattern a line; blank lines and `#` comments are skipped. A
    pattern ending in `/` matches directories only; a pattern with a `/` inside
    matches the path from the package root, otherwise the entry's name at any depth.
    """
    patterns = list(ALWAYS_IGNORED)
    for name in IGNORE_FILES:
        path = Path(directory) / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    patterns.append(line)
    return patterns


def is_ignored(relpath: str, is_dir: bool, patterns: list[str]) -> bool:
    """Whether the entry at `relpath` (posix, relative to the root) is skipped."""
    name = relpath.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern.rstrip("/")
        anchored = "/" in pattern
        pattern = pattern.lstrip("/")
        if fnmatch.fnmatchcase(relpath if anchored else name, pattern):
            return True
    return False


def is_ignored_path(relpath: str, is_dir: bool, patterns: list[str]) -> bool:
    """is_ignored for an entry at any depth: also true inside an ignored directory."""
    parts = relpath.split("/")
    ancestors = ("/".join(parts[:i]) for i in range(1, len(parts)))
    return any(is_ignored(a, True, patterns) for a in ancestors) or is_ignored(relpath, is_dir, patterns)


def package_entries(directory: Path | str) -> list[tuple[str, Path]]:
    """Sorted (archive path, file system path) of the entries to archive.

    Ignored directories are not descended into. Symbolic links to files are
    archived as the file they point at; links to directories are not followed.
    Directories of `external_package_dirs` outside the package are archived into it
    (replica.package.bundled_external_dir), as Truss copies them into its image.
    """
    root = _package_dir(directory)
    patterns = load_ignore_patterns(root)
    entries = _walk(root, "", patterns)
    for index, source in outside_external_dirs(root):
        bundled = bundled_external_dir(index)
        entries += [(".external", source), (bundled, source), *_walk(source, bundled + "/", patterns)]
    return sorted(dict(entries).items())  # the .external directory entry once


def outside_external_dirs(root: Path) -> list[tuple[int, Path]]:
    """(index, resolved directory) of the config's external_package_dirs that lie outside
    the package (through a symbolic link too): those a push bundles."""
    try:
        raw = parse_config((root / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # the controller refuses the package and says why
    entries = raw.get("external_package_dirs")
    outside = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        source = (root / str(entry)).resolve()
        if source.is_relative_to(root.resolve()):
            continue
        if not source.is_dir():
            raise PackageError(f"external_package_dirs entry {entry!r} is not a directory ({source})")
        outside.append((index, source))
    return outside


def _walk(root: Path, prefix: str, patterns: list[str]) -> list[tuple[str, Path]]:
    """(archive path, file system path) of the entries below `root`, archived under `prefix`.
    Ignore patterns match paths relative to `root`."""
    entries: list[tuple[str, Path]] = []
    for current, dirnames, filenames in os.walk(root):
        base = Path(current).relative_to(root).as_posix()
        relative = "" if base == "." else base + "/"
        kept = []
        for name in dirnames:
            rel = relative + name
            if os.path.islink(os.path.join(current, name)) or is_ignored(rel, True, patterns):
                continue
            kept.append(name)
            entries.append((prefix + rel, Path(current, name)))
        dirnames[:] = kept
        for name in filenames:
            rel = relative + name
            path = Path(current, name)
            if path.is_file() and not is_ignored(rel, False, patterns):
                entries.append((prefix + rel, path))
    return entries


def _tar_info(arcname: str, path: Path) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_dir():
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
    return info


def archive_package(directory: Path | str) -> tuple[bytes, str]:
    """Archive a package directory; returns (gzip tar bytes, hex sha256 of them)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buffer, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for arcname, path in package_entries(directory):
                info = _tar_info(arcname, path)
                if info.isdir():
                    tar.addfile(info)
                    continue
                data = path.read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return data, sha256_hex(data)


def read_model_name(directory: Path | str) -> str:
    """The package's `model_name` from config.yaml ("" when it has none)."""
    config_path = _package_dir(directory) / CONFIG_FILE
    try:
        config = parse_config(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise PackageError(f"{config_path}: {exc}") from exc
    return str(config.get("model_name") or "")


def sha256_hex(data: bytes) -> str:
    """The content hash used for archives and for per-file change detection."""
    return hashlib.sha256(data).hexdigest()
