"""Content-addressed package storage.

A package arrives as a gzip tar with its sha256. It is checked (hash, archive
safety, package layout) before anything is stored, then kept as
`<data_dir>/packages/<digest>.tar.gz` and unpacked once into `<digest>/`, so every
deployment keeps the exact code it was created from. A live-reload patch derives a
new package from a stored one; it is archived the way the CLI archives a directory,
so the same files give the same digest however they arrived. Packages no deployment
refers to any more are pruned by the reconciler's garbage collection.

A push stages its package (unpacked aside and checked, within PackageLimits) and
stores it only once every rule has accepted the push, so a refused push leaves nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pathlib
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from controller.errors import FailedPrecondition, InvalidArgument
from controller.files import tighten
from replica.package import CONFIG_FILENAME, PackageConfig, load_package_config, validate_package
from slipway.packaging import archive_package

TRASH_PREFIX = ".trash-"
STAGED_TREE = "package"
STAGED_ARCHIVE = "archive.tar.gz"
T = TypeVar("T")


@dataclass(frozen=True)
class PackageLimits:
    """What a package may unpack to: operator settings (ControllerSettings.package_limits),
    enforced while the archive is read, before more than the limit is written."""

    max_unpacked_bytes: int = 2 * 1024**3
    max_files: int = 10_000  # files and directories
    # Unpacked bytes per archive byte. Tar pads every file to 512-byte blocks and a small
    # package compresses well, so the ratio applies only to packages over ratio_free_bytes.
    max_compression_ratio: float = 100.0
    ratio_free_bytes: int = 16 * 1024**2
    max_config_bytes: int = 256 * 1024


@dataclass(frozen=True)
class FilePatch:
    """Write `content` to `path` (relative, `/`-separated), or delete it."""

    path: str
    content: bytes = b""
    delete: bool = False


@dataclass(frozen=True)
class StagedPackage(Generic[T]):
    """A checked package not yet in the store: commit() stores it, discard() drops what is left."""

    digest: str
    # What the check returned. Computed on the staging copy: paths in it do not outlive the staging.
    checked: T
    staging: pathlib.Path | None  # None: the package was stored already


class PackageStore:
    def __init__(self, root: pathlib.Path, limits: PackageLimits | None = None) -> None:
        self.root = root
        self.limits = limits or PackageLimits()
        root.mkdir(parents=True, exist_ok=True)

    def directory(self, digest: str) -> pathlib.Path:
        return self.root / digest

    def stage(self, archive: bytes, claimed_sha256: str, check: Callable[[pathlib.Path], T]) -> StagedPackage[T]:
        """Verify an archive, unpack it aside and `check` the package, storing nothing.

        `check` raises ValueError for a malformed package, or a SlipwayError.
        """
        digest = hashlib.sha256(archive).hexdigest()
        if claimed_sha256 and claimed_sha256.lower() != digest:
            raise InvalidArgument(
                "PACKAGE_HASH_MISMATCH",
                f"package_sha256 {claimed_sha256[:64]} does not match the archive's sha256 {digest}",
            )
        stored = self.directory(digest)
        if stored.is_dir():
            os.utime(stored)  # pushed again: not garbage for another grace period (see prune)
            return StagedPackage(digest, _checked(check, stored), None)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=self.root))
        try:
            _unpack(archive, staging / STAGED_TREE, self.limits)
            tighten(staging / STAGED_TREE)  # tarfile sets the modes the archive carries
            checked = _checked(check, staging / STAGED_TREE)
            (staging / STAGED_ARCHIVE).write_bytes(archive)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return StagedPackage(digest, checked, staging)

    def commit(self, staged: StagedPackage) -> None:
        """Store a staged package (renames only: cheap inside a transaction)."""
        if staged.staging is None:
            return
        target = self.directory(staged.digest)
        os.replace(staged.staging / STAGED_ARCHIVE, self.root / f"{staged.digest}.tar.gz")
        try:
            os.rename(staged.staging / STAGED_TREE, target)
        except OSError:
            if not target.is_dir():  # otherwise another push of the same package stored it first
                raise

    def discard(self, staged: StagedPackage) -> None:
        """Remove what is left of a staged package: all of it unless it was committed."""
        if staged.staging is not None:
            shutil.rmtree(staged.staging, ignore_errors=True)

    def add(
        self,
        archive: bytes,
        claimed_sha256: str,
        check: Callable[[pathlib.Path], PackageConfig] = validate_package,
    ) -> tuple[str, PackageConfig]:
        """Verify, check and store an archive; returns (digest, parsed config). Idempotent."""
        staged = self.stage(archive, claimed_sha256, check)
        try:
            self.commit(staged)
        finally:
            self.discard(staged)
        return staged.digest, _checked(check, self.directory(staged.digest))

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


def _checked(check: Callable[[pathlib.Path], T], directory: pathlib.Path) -> T:
    try:
        return check(directory)
    except ValueError as exc:
        raise InvalidArgument("MALFORMED_PACKAGE", f"malformed package: {exc}") from exc


class _LimitedDecompression(io.RawIOBase):
    """The archive's tar stream, refused once it decompresses past a limit: member headers
    do not account for every byte (extended headers, padding)."""

    def __init__(self, archive: bytes, limits: PackageLimits) -> None:
        self._gzip = gzip.GzipFile(fileobj=io.BytesIO(archive), mode="rb")
        self._archive_size = len(archive)
        self._limits = limits
        self._decompressed = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._gzip.close()
        super().close()

    def read(self, size: int = -1) -> bytes:
        data = self._gzip.read(size)
        self._decompressed += len(data)
        _check_unpacked_size(self._decompressed, self._archive_size, self._limits)
        return data


def _unpack(archive: bytes, tree: pathlib.Path, limits: PackageLimits) -> None:
    """Extract the archive member by member, refusing a member from its header before
    anything of it is written."""
    files = unpacked = 0
    try:
        with _LimitedDecompression(archive, limits) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _check_member(member, limits)
                files += 1
                if files > limits.max_files:
                    raise InvalidArgument(
                        "PACKAGE_TOO_MANY_FILES",
                        f"the package has more than {limits.max_files} files and directories "
                        f"(limit max_files = {limits.max_files})",
                        limit="max_files",
                        value=str(limits.max_files),
                    )
                unpacked += member.size
                _check_unpacked_size(unpacked, len(archive), limits)
                tar.extract(member, tree, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise InvalidArgument(
            "MALFORMED_PACKAGE", f"package_archive is not a readable gzip tar archive: {exc}"
        ) from exc


def _check_member(member: tarfile.TarInfo, limits: PackageLimits) -> None:
    path = pathlib.PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidArgument("MALFORMED_PACKAGE", f"archive member {member.name!r} escapes the package directory")
    if not (member.isfile() or member.isdir()):
        raise InvalidArgument("MALFORMED_PACKAGE", f"archive member {member.name!r} is not a regular file or directory")
    if path == pathlib.PurePosixPath(CONFIG_FILENAME) and member.size > limits.max_config_bytes:
        raise InvalidArgument(
            "MALFORMED_PACKAGE",
            f"{CONFIG_FILENAME} is {member.size} bytes, over the limit of {limits.max_config_bytes} (max_config_bytes)",
            limit="max_config_bytes",
            value=str(limits.max_config_bytes),
        )


def _check_unpacked_size(unpacked: int, archive_size: int, limits: PackageLimits) -> None:
    if unpacked > limits.max_unpacked_bytes:
        raise InvalidArgument(
            "PACKAGE_TOO_LARGE",
            f"the package unpacks to more than {limits.max_unpacked_bytes} bytes "
            f"(limit max_unpacked_bytes = {limits.max_unpacked_bytes})",
            limit="max_unpacked_bytes",
            value=str(limits.max_unpacked_bytes),
        )
    if unpacked > limits.ratio_free_bytes and unpacked > limits.max_compression_ratio * archive_size:
        raise InvalidArgument(
            "PACKAGE_COMPRESSION_RATIO_TOO_HIGH",
            f"the {archive_size}-byte archive unpacks to more than {unpacked} bytes, over "
            f"{limits.max_compression_ratio:g} times its size (limit max_compression_ratio = "
            f"{limits.max_compression_ratio:g}, for packages over {limits.ratio_free_bytes} bytes)",
            limit="max_compression_ratio",
            value=f"{limits.max_compression_ratio:g}",
        )


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
