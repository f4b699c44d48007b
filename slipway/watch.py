"""`slipway watch`: live reload of a package directory into its development deployment.

The watcher remembers the package as the controller last accepted it: its digest
(the base of the next patch) and a content hash per file. After each burst of file
changes it hashes the directory again (re-reading only files whose size or
modification time changed), sends the files that differ as one PatchDeployment,
and prints one line: what changed, how it was applied, how long it took. When its
base is stale (someone pushed meanwhile) it pushes the whole package and carries on.

Which files count is decided by slipway.packaging, as for a push: the package's
ignore files, caches, and editors' temporary files are never sent.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import click
import grpc
import watchfiles

from slipway.client import (
    DeploymentFailed,
    SlipwayClient,
    SlipwayError,
    error_reason,
    format_rpc_error,
    state_name,
)
from slipway.packaging import (
    PackageError,
    archive_package,
    is_ignored_path,
    load_ignore_patterns,
    outside_external_dirs,
    package_entries,
    read_model_name,
    sha256_hex,
)
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import resources_pb2 as res

# A burst of changes (an editor's save is several events) ends after STEP_MS without
# a new one, or after DEBOUNCE_MS at the most.
STEP_MS = 30
DEBOUNCE_MS = 1600
# The watcher yields an empty batch after this long without changes; the first one
# means that it is running.
IDLE_MS = 250
# Changes the controller could not be reached for are sent again this often.
RETRY_SECONDS = 2.0
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Refusals that a push of the whole package resolves.
RESYNC_REASONS = frozenset({"STALE_PACKAGE_BASE", "MODEL_NAME_CHANGED", "DEPLOYMENT_NOT_FOUND", "DEPLOYMENT_DELETED"})
MAX_LISTED_EDITS = 3
# A traceback line naming a file by a relative path (a package file; see replica/loader.py).
RELATIVE_FILE = re.compile(r'File "([^"/<][^"]*)"')

Manifest = dict[str, str]  # package path -> sha256 of the file's content


class PackageTree:
    """The files of a package directory as a push archives them, with their content hashes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._hashes: dict[str, tuple[tuple[int, int], str]] = {}
        self._paths: dict[str, Path] = {}  # package path -> file (bundled external ones lie elsewhere)

    def manifest(self) -> Manifest:
        """Hashes of every file; only files whose size or mtime changed since the last call are read."""
        manifest = {}
        for relpath, path in package_entries(self.directory):
            try:
                info = path.stat()
                if stat.S_ISDIR(info.st_mode):
                    continue
                key = (info.st_size, info.st_mtime_ns)
                cached = self._hashes.get(relpath)
                if cached is None or cached[0] != key:
                    cached = self._hashes[relpath] = (key, sha256_hex(path.read_bytes()))
            except OSError:  # removed while we looked: the next burst of changes sees it gone
                continue
            manifest[relpath] = cached[1]
            self._paths[relpath] = path
        return manifest

    def read(self, relpath: str) -> bytes:
        return self._paths.get(relpath, self.directory / relpath).read_bytes()


@dataclass(frozen=True)
class Edit:
    path: str
    kind: str  # added, changed, deleted


@dataclass(frozen=True)
class Patch:
    edits: list[Edit]
    files: list[ds.FilePatch]
    # The package's files once the patch is applied.
    manifest: Manifest


def compute_patch(tree: PackageTree, base: Manifest) -> Patch:
    """The file changes that turn `base` into the directory's current content."""
    current = tree.manifest()
    manifest = dict(current)
    edits, files = [], []
    for path in sorted(base.keys() | current.keys()):
        if path not in current:
            edits.append(Edit(path, "deleted"))
            files.append(ds.FilePatch(path=path, delete=True))
        elif base.get(path) != current[path]:
            try:
                content = tree.read(path)
            except OSError:  # removed since it was hashed: leave it for the next round
                manifest.pop(path)
                if path in base:
                    manifest[path] = base[path]
                continue
            # What is sent is what is recorded, even if the file changed once more meanwhile.
            manifest[path] = sha256_hex(content)
            edits.append(Edit(path, "added" if path not in base else "changed"))
            files.append(ds.FilePatch(path=path, content=content))
    return Patch(edits, files, manifest)


def describe(edits: list[Edit]) -> str:
    shown = ", ".join(f"{e.path} {e.kind}" for e in edits[:MAX_LISTED_EDITS])
    more = len(edits) - MAX_LISTED_EDITS
    return shown + (f" and {more} more" if more > 0 else "")


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


class WatchSession:
    """Keeps one package directory and its model's development deployment in step."""

    def __init__(self, client: SlipwayClient, directory: Path, timeout: float, model_name: str = "") -> None:
        self.client = client
        self.directory = directory.resolve()
        self.model_name = model_name  # `push --model-name`: the model, whatever config.yaml says
        self.timeout = timeout
        self.tree = PackageTree(self.directory)
        self.deployment_id = ""
        self.digest = ""
        self.manifest: Manifest = {}
        self._ignore_patterns = load_ignore_patterns(self.directory)
        # Set while changes wait to be sent again (the controller was unreachable).
        self._retry_at: float | None = None
        self._last_failure = ""
        self._roots = [self.directory]  # what is watched

    # --- starting point -------------------------------------------------------------

    def start(self) -> None:
        """Make sure the development deployment runs this directory's package (push it if not)."""
        # Hashed before archiving: a file that changes in between is sent again, never missed.
        manifest = self.tree.manifest()
        _, digest = archive_package(self.directory)
        deployment = self._development_deployment()
        if deployment is not None and deployment.package_digest == digest:
            click.echo(
                f"Development deployment {deployment.id} has this package already "
                f"({state_name(deployment.state)}, revision {deployment.revision})."
            )
            if not deployment.active:
                click.echo(
                    f"It is inactive: changes are stored and served once it is activated "
                    f"(slipway deployments activate {deployment.id})."
                )
        else:
            started = time.monotonic()
            deployment, failure = self._push()
            click.echo(
                f"Pushed {self.directory.name} to development deployment {deployment.id}: "
                f"{failure or 'serving'} ({duration(time.monotonic() - started)})"
            )
        self.deployment_id, self.digest, self.manifest = deployment.id, deployment.package_digest, manifest

    def _development_deployment(self) -> res.Deployment | None:
        model_name = self.model_name or read_model_name(self.directory)
        if not model_name:
            return None  # the push refuses the package and says why
        try:
            model = self.client.get_model(model_name)
            if not model.development_deployment_id:
                return None
            return self.client.get_deployment(model.development_deployment_id)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def _push(self) -> tuple[res.Deployment, str]:
        """Push the whole package as development and wait for it: (deployment, failure or "")."""
        deployment = self.client.push(self.directory, "development", model_name=self.model_name).deployment
        return self._wait_until_serving(deployment.id)

    def _wait_until_serving(self, deployment_id: str) -> tuple[res.Deployment, str]:
        try:
            return self.client.wait_until_serving(deployment_id, self.timeout), ""
        except DeploymentFailed as err:
            return err.deployment, f"failed: {err}"

    # --- watching ---------------------------------------------------------------------

    def run(self) -> None:
        """Patch the deployment after every burst of changes until Ctrl-C."""
        running = False
        self._roots = [self.directory, *(source for _, source in outside_external_dirs(self.directory))]
        for changes in watchfiles.watch(
            *self._roots,
            watch_filter=self._relevant,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            rust_timeout=IDLE_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if not running:
                running = True
                click.echo(f"Watching {self.directory} (Ctrl-C to stop)")
                self.sync()  # catches changes made while the watcher was starting
            elif changes or (self._retry_at is not None and time.monotonic() >= self._retry_at):
                self.sync()

    def _relevant(self, change: watchfiles.Change, path: str) -> bool:
        for root in self._roots:  # the package, then the external directories bundled into it
            relpath = os.path.relpath(path, root).replace(os.sep, "/")
            if not relpath.startswith(".."):
                return not is_ignored_path(relpath, os.path.isdir(path), self._ignore_patterns)
        return False

    def sync(self) -> None:
        """Send what changed since the last accepted package, and print one line about it."""
        started = time.monotonic()
        self._retry_at = None
        try:
            self._ignore_patterns = load_ignore_patterns(self.directory)
            patch = compute_patch(self.tree, self.manifest)
        except (PackageError, OSError) as err:
            click.echo(f"Not sending changes: {err}", err=True)
            return
        if not patch.files:
            return
        try:
            how = self._apply(patch)
        except (grpc.RpcError, SlipwayError, PackageError) as err:
            # The base is kept: these changes are sent again with the next ones, or
            # before that once the controller is back.
            if isinstance(err, grpc.RpcError) and err.code() in RETRIED_CODES:
                self._retry_at = time.monotonic() + RETRY_SECONDS
            failure = (
                f"{describe(patch.edits)}: failed: {format_rpc_error(err) if isinstance(err, grpc.RpcError) else err}"
            )
            if failure != self._last_failure:  # a retry that fails the same way is not reported again
                click.echo(f"{failure} ({duration(time.monotonic() - started)})")
            self._last_failure = failure
            return
        self._last_failure = ""
        click.echo(f"{describe(patch.edits)}: {how} ({duration(time.monotonic() - started)})")

    def _apply(self, patch: Patch) -> str:
        try:
            response = self.client.patch_deployment(self.deployment_id, self.digest, patch.files)
        except grpc.RpcError as err:
            if error_reason(err) not in RESYNC_REASONS:
                raise
            return self._resync()
        self.digest, self.manifest = response.package_digest, patch.manifest
        for warning in response.warnings:
            click.echo(f"warning: {warning}", err=True)
        if response.result == ds.PATCH_RESULT_APPLIED_IN_PLACE:
            return "applied in place"
        if response.result == ds.PATCH_RESULT_STORED:
            return "stored; no replica is running, the next one starts with it"
        if response.result == ds.PATCH_RESULT_RESTARTED:
            failure = self._wait_until_serving(self.deployment_id)[1]
            return f"restarted, {failure}" if failure else "restarted"
        if response.traceback:
            click.echo(self._local_paths(response.traceback).rstrip(), err=True)
        return f"failed, the previous code keeps serving: {response.error}"

    def _local_paths(self, traceback: str) -> str:
        """The replica names the package's files relative to its root: name them as the
        files of this directory, the ones the user edits."""
        return RELATIVE_FILE.sub(lambda m: f'File "{self.directory / m.group(1)}"', traceback)

    def _resync(self) -> str:
        manifest = self.tree.manifest()
        deployment, failure = self._push()
        self.deployment_id, self.digest, self.manifest = deployment.id, deployment.package_digest, manifest
        return f"restarted with the whole package (the deployment had changed){', ' + failure if failure else ''}"


def watch_package(client: SlipwayClient, directory: Path, timeout: float, model_name: str = "") -> None:
    session = WatchSession(client, directory, timeout, model_name)
    session.start()
    session.run()
    click.echo("Stopped watching.")
