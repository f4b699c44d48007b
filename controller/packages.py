"""Content-addressed package storage.

A package arrives as a gzip tar with its sha256. It is checked (hash, archive
safety, package layout) before anything is stored, then kept as
`<data_dir>/packages/<digest>.tar.gz` and unpacked once into `<digest>/`, so every
deployment keeps the exact code it was created from.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import shutil
import tarfile
import tempfile

from controller.errors import InvalidArgument
from replica.package import PackageConfig, validate_package

MAX_UNPACKED_BYTES = 2 * 1024**3


class PackageStore:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def directory(self, digest: str) -> pathlib.Path:
        return self.root / digest

    def add(self, archive: bytes, claimed_sha256: str) -> tuple[str, PackageConfig]:
        """Verify and store an archive; returns (digest, parsed config). Idempotent."""
        digest = hashlib.sha256(archive).hexdigest()
        if claimed_sha256 and claimed_sha256.lower() != digest:
            raise InvalidArgument(
                "PACKAGE_HASH_MISMATCH",
                f"package_sha256 {claimed_sha256} does not match the archive's sha256 {digest}",
            )
        target = self.directory(digest)
        if not target.is_dir():
            self._unpack(archive, digest, target)
        try:
            config = validate_package(target)
        except ValueError as exc:
            raise InvalidArgument("MALFORMED_PACKAGE", f"malformed package: {exc}") from exc
        return digest, config

    def _unpack(self, archive: bytes, digest: str, target: pathlib.Path) -> None:
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
                validate_package(staging)
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
