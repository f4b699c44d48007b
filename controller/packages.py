"""Content-addressed package storage.

A package arrives as a gzip tar with its sha256. It is checked (hash, archive
safety, package layout) before anything is stored, then kept as
`<data_dir>/packages/<digest>.tar.gz` and unpacked once into `<digest>/`, so every
deployment keeps the exact code it was created from. A live-reload patch derives a
new package from a stored one; it is archived the way the CLI archives a directory,
so the same files give the same digest however they arrived. Packages no deployment
refers to any more are pruned by the reconciler's garbage collection.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.errors import FailedPrecondition, InvalidArgument
from replica.package import PackageConfig, load_package_config, validate_package
from slipway.packaging import archive_package

MAX_UNPACKED_BYTES = 2 * 1024**3
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class FilePatch:
    """Write `content` to `path` (relative, `/`-separated), or delete it."""

    path: str
    content: bytes = b""
    delete: bool = False


class PackageStore:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def directory(self, digest: str) -> pathlib.Path:
        return self.root / digest

    def add(
        self,
        archive: bytes,
        claimed_sha256: str,
        check: Callable[[pathlib.Path], PackageConfig] = validate_package,
    ) -> tuple[str, PackageConfig]:
        """Verify and store an archive; returns (digest, parsed config). Idempotent.

        `check` validates the unpacked package (raising ValueError).
        """
        digest = hashlib.sha256(archive).hexdigest()
        if claimed_sha256 and claimed_sha256.lower() != digest:
            raise InvalidArgument(
                "PACKAGE_HASH_MISMATCH",
                f"package_sha256 {claimed_sha256} does not match the archive's sha256 {digest}",
            )
        target = self.directory(digest)
        if target.is_dir():
            os.utime(target)  # stored again: not garbage for another grace period (see prune)
        else:
            self._unpack(archive, digest, target, check)
        try:
            config = check(target)
        except ValueError as exc:
            raise InvalidArgument("MALFORMED_PACKAGE", f"malformed package: {exc}") from exc
        return digest, config

    def derive(self, base_digest: str, patches: Sequence[FilePatch]) -> tuple[str, PackageConfig, int]:
        """Store the package `base_digest` with `patches` applied; returns (digest, config, archive size).

        Only config.yaml is checked: an error in the model code is stored like any
        edit, for the replica to report with its traceback.
        """
        _check_patch_paths(patches)
        source = self.directory(base_digest)
        if not source.is_dir():
            raise FailedPrecondition(
                "PACKAGE_MISSING", f"package {base_digest[:12]} is not in the package store", package_digest=base_digest
            )
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{base_digest[:12]}-patch-", dir=self.root))
        try:
            tree = staging / "package"
            # Hard links are safe: stored files are never written to, and a patch replaces a file.
            shutil.copytree(source, tree, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("__pycache__"))
            for patch in patches:
                _apply_patch(tree, patch)
            archive, digest = archive_package(tree)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        digest, config = self.add(archive, digest, check=load_package_config)
        return digest, config, len(archive)

    def prune(self, keep: set[str], grace_seconds: float) -> list[pathlib.Path]:
        """Take out of the store the packages not in `keep` (and leftover staging
        directories) last stored more than `grace_seconds` ago: a push stores its package
        before it commits the deployment that refers to it. Returns them moved aside,
        for the caller to delete off the event loop."""
        cutoff = time.time() - grace_seconds
        doomed = []
        for entry in self.root.iterdir():
            if not entry.is_dir() or entry.name in keep:
                continue
            if entry.name.startswith(TRASH_PREFIX):  # left by an interrupted prune
                doomed.append(entry)
                continue
            if entry.stat().st_mtime > cutoff:
                continue
            trash = self.root / f"{TRASH_PREFIX}{entry.name}"
            os.rename(entry, trash)
            (self.root / f"{entry.name}.tar.gz").unlink(missing_ok=True)
            doomed.append(trash)
        return doomed

    def _unpack(
        self, archive: bytes, digest: str, target: pathlib.Path, check: Callable[[pathlib.Path], PackageConfig]
    ) -> None:
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=self.root))
        try:
            try:
                with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                    _check_members(tar)
                    tar.extractall(staging, filter="data")
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                if isinstance(exc, InvalidArgument):
                    raise
                raise InvalidArgument(
                    "MALFORMED_PACKAGE", f"package_archive is not a readable gzip tar archive: {exc}"
                ) from exc
            try:
                check(staging)
            except ValueError as exc:
                raise InvalidArgument("MALFORMED_PACKAGE", f"malformed package: {exc}") from exc
            (self.root / f"{digest}.tar.gz").write_bytes(archive)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():  # another push of the same package won the race otherwise
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _check_members(tar: tarfile.TarFile) -> None:
    total = 0
    for member in tar.getmembers():
        path = pathlib.PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise InvalidArgument("MALFORMED_PACKAGE", f"archive member {member.name!r} escapes the package directory")
        if not (member.isfile() or member.isdir()):
            raise InvalidArgument(
                "MALFORMED_PACKAGE", f"archive member {member.name!r} is not a regular file or directory"
            )
        total += member.size
        if total > MAX_UNPACKED_BYTES:
            raise InvalidArgument("PACKAGE_TOO_LARGE", f"package unpacks to more than {MAX_UNPACKED_BYTES} bytes")


def _check_patch_paths(patches: Sequence[FilePatch]) -> None:
    if not patches:
        raise InvalidArgument("EMPTY_PATCH", "a patch needs at least one file change")
    seen: set[str] = set()
    for patch in patches:
        path = pathlib.PurePosixPath(patch.path)
        if not path.parts or path.is_absolute() or ".." in path.parts:
            raise InvalidArgument(
                "INVALID_PATCH_PATH",
                f"patch path {patch.path!r} must be a relative path inside the package, without '..'",
                path=patch.path,
            )
        if str(path) in seen:
            raise InvalidArgument("DUPLICATE_PATCH_PATH", f"patch path {patch.path!r} appears twice", path=patch.path)
        seen.add(str(path))


def _apply_patch(tree: pathlib.Path, patch: FilePatch) -> None:
    target = tree / patch.path
    try:
        if target.is_dir():
            raise InvalidArgument("INVALID_PATCH_PATH", f"patch path {patch.path!r} is a directory", path=patch.path)
        mode = target.stat().st_mode if target.is_file() else None
        target.unlink(missing_ok=True)  # never write through a hard link into the base package
        if patch.delete:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(patch.content)
        if mode is not None:
            target.chmod(mode)
    except OSError as exc:
        raise InvalidArgument(
            "INVALID_PATCH_PATH", f"cannot apply the patch to {patch.path!r}: {exc.strerror}", path=patch.path
        ) from exc


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
