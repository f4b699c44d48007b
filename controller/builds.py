"""Isolated Python environments for the requirements of model packages.

A package that declares requirements (`requirements`, or `requirements_file`) runs
in its own virtual environment, created with uv from the controller's interpreter
and holding exactly those requirements. Environments are content-addressed: the key
is a hash of the normalised requirement lines, the interpreter and the paths the
model server is imported from, so every package with the same requirements shares
one environment, built once.

The model server itself (`python -m replica`, with grpcio, protobuf, ...) comes from
the controller's environment: a `.pth` file in the environment's site-packages
appends the controller's site-packages and the Slipway source root *after* the
environment's own, so the package's pinned versions take precedence. A build ends by
importing the model server in the new environment, so requirements that break it
fail the build instead of every replica.

Layout under the builds directory (default `<data_dir>/builds`):
  envs/<key>/                 a complete environment (marker file inside)
  envs/.tmp-<key>-<pid>-<n>/  an environment being built; renamed into place when
                              complete, so a half-built one is never used. Left-overs
                              of a process that is gone are removed at start.
  logs/<deployment_id>.log    what each deployment's builds did (installer output)

Builds run as asyncio subprocesses, at most one per key; deployments that need an
environment being built wait for that build.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import pathlib
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from controller.environment_specs import (
    BuildError,
    EnvironmentSpec,
    environment_spec,
    plural,
    runtime_paths,
    uv_command,
)
from controller.files import TRAVERSABLE_DIR, share_read_only
from replica.package import without_secrets

log = logging.getLogger("slipway.builds")

MARKER = "slipway-environment.json"
PTH_NAME = "zzzz_slipway_runtime.pth"
ERROR_TAIL_CHARS = 3000

EventSink = Callable[[str, str, str, str], Awaitable[None]]  # (model_id, deployment_id, type, message)


@dataclass(frozen=True)
class EnvironmentStatus:
    """What the reconciler needs: the interpreter to start replicas with (None: the
    controller's own), or that the environment is being built, or why it failed."""

    python: str | None = None
    building: bool = False
    error: str = ""
    requirements: int = 0


@dataclass
class _Build:
    spec: EnvironmentSpec
    task: asyncio.Task
    # (deployment_id, revision, update_time) of every deployment waiting for this build → its model ID
    waiters: dict[tuple, str] = field(default_factory=dict)


class BuildManager:
    def __init__(
        self,
        root: pathlib.Path,
        on_change: Callable[[], None] = lambda: None,
        on_event: EventSink | None = None,
        python: str = sys.executable,
        timeout_seconds: float = 1800.0,
        shared: bool = False,
        on_built: Callable[[str, float], None] = lambda outcome, seconds: None,
    ) -> None:
        self.root = pathlib.Path(root)
        # Told ("succeeded" or "failed", seconds) of every build that ran to an end: metrics.
        self._on_built = on_built
        self.envs_dir = self.root / "envs"
        self.logs_dir = self.root / "logs"
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        # `shared`: replicas run as other users, who must run the environments (public
        # packages only); the build logs stay private.
        self.shared = shared
        if shared:
            self.root.chmod(TRAVERSABLE_DIR)
            share_read_only(self.envs_dir)
        self.python = python
        self.timeout_seconds = timeout_seconds
        self._on_change = on_change
        self._on_event = on_event
        self._paths = runtime_paths()
        self._specs: dict[str, EnvironmentSpec | None | str] = {}
        self._builds: dict[str, _Build] = {}
        self._failures: dict[tuple, str] = {}
        self._noted: set[tuple] = set()
        self._counter = itertools.count()
        # Number of environments installed by this manager (tests check reuse with it).
        self.installs = 0
        self._remove_leftovers()

    # --- paths ----------------------------------------------------------------------

    def env_dir(self, key: str) -> pathlib.Path:
        return self.envs_dir / key

    def env_python(self, key: str) -> pathlib.Path:
        return self.env_dir(key) / "bin" / "python"

    def log_path(self, deployment_id: str) -> pathlib.Path:
        return self.logs_dir / f"{deployment_id}.log"

    def ready(self, key: str) -> bool:
        return (self.env_dir(key) / MARKER).is_file() and self.env_python(key).exists()

    # --- specs ------------------------------------------------------------------------

    def spec_for(self, package_dir: pathlib.Path, digest: str = "") -> EnvironmentSpec | None:
        return environment_spec(package_dir, self.python, self._paths, digest)

    def _cached_spec(self, digest: str, package_dir: pathlib.Path) -> EnvironmentSpec | None:
        """spec_for, cached by package digest (stored packages never change)."""
        if digest not in self._specs:
            try:
                self._specs[digest] = self.spec_for(package_dir, digest)
            except BuildError as exc:
                self._specs[digest] = str(exc)
        cached = self._specs[digest]
        if isinstance(cached, str):
            raise BuildError(cached)
        return cached

    # --- the reconciler's view ---------------------------------------------------------

    async def status(self, deployment, package_dir: pathlib.Path) -> EnvironmentStatus:
        """Make sure the deployment's environment exists or is being built.

        A failure is reported once to each deployment that waited for the failed build
        (then it is up to the caller to record it); a deployment asking again after
        that (re-activated, pushed again) starts a new build.
        """
        waiter = (deployment.id, deployment.revision, deployment.update_time)
        failure = self._failures.pop(waiter, None)
        if failure is not None:
            return EnvironmentStatus(error=failure)
        try:
            spec = self._cached_spec(deployment.package_digest, package_dir)
        except BuildError as exc:
            return EnvironmentStatus(error=f"the environment build failed: {exc}")
        if spec is None:
            return EnvironmentStatus()
        count = len(spec.requirements)
        if self.ready(spec.key):
            if waiter not in self._noted:
                self._noted.add(waiter)
                if not any(waiter in build.waiters for build in self._builds.values()):
                    self._append_log(
                        deployment.id,
                        f"environment {spec.key[:12]} ({plural(count)}) is already built; reusing it, nothing to install",
                    )
                    await self._event(
                        deployment,
                        "deployment.environment_reused",
                        f"environment {spec.key[:12]} ({plural(count)}) is already built; nothing to install",
                    )
            return EnvironmentStatus(python=str(self.env_python(spec.key)), requirements=count)
        build = self._builds.get(spec.key)
        if build is None:
            build = _Build(spec, asyncio.create_task(self._run(spec, deployment)))
            self._builds[spec.key] = build
            build.task.add_done_callback(functools.partial(self._finished, spec.key))
            build.waiters[waiter] = deployment.model_id
            self._noted.add(waiter)
            await self._event(
                deployment,
                "deployment.build_started",
                f"building environment {spec.key[:12]}: {', '.join(spec.requirements)}",
            )
        elif waiter not in build.waiters:
            build.waiters[waiter] = deployment.model_id
            self._noted.add(waiter)
            self._append_log(deployment.id, f"waiting for environment {spec.key[:12]}, which is being built now")
            await self._event(
                deployment,
                "deployment.build_started",
                f"waiting for environment {spec.key[:12]} ({plural(count)}), which is being built now",
            )
        return EnvironmentStatus(building=True, requirements=count)

    def _finished(self, key: str, task: asyncio.Task) -> None:
        build = self._builds.pop(key, None)
        if build is None or task.cancelled():
            return
        error = task.exception()
        for waiter in build.waiters:
            if error is not None:
                self._failures[waiter] = f"the environment build failed: {error}"
                self._append_log(waiter[0], f"build of environment {key[:12]} FAILED:\n{error}")
            elif waiter[0] != task.get_name():
                self._append_log(waiter[0], f"environment {key[:12]} is ready")
        self._on_change()

    async def close(self) -> None:
        """Stop running builds (their temporary directories are removed)."""
        tasks = [build.task for build in self._builds.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- building -------------------------------------------------------------------------

    async def _run(self, spec: EnvironmentSpec, deployment) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name(deployment.id)
        started = time.monotonic()
        outcome = "failed"
        log_path = self.log_path(deployment.id)
        tmp = self.envs_dir / f".tmp-{spec.key}-{os.getpid()}-{next(self._counter)}"
        waiting = self._builds.get(spec.key)
        try:
            with log_path.open("a", encoding="utf-8") as out:
                out.write(
                    f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} building environment {spec.key} "
                    f"for revision {deployment.revision}\n" + "".join(f"    {line}\n" for line in spec.requirements)
                )
                out.flush()
                uv = uv_command()
                requirements_txt = self.envs_dir / f".tmp-{spec.key}-{os.getpid()}-requirements.txt"
                requirements_txt.write_text("".join(f"{line}\n" for line in spec.requirements))
                try:
                    await self._step(
                        out,
                        "create the environment",
                        [*uv, "venv", "--relocatable", "--python", self.python, str(tmp)],
                        self.envs_dir,
                    )
                    python = tmp / "bin" / "python"
                    await self._step(
                        out,
                        "install the requirements",
                        [*uv, "pip", "install", "--python", str(python), "-r", str(requirements_txt)],
                        spec.workdir,
                    )
                finally:
                    requirements_txt.unlink(missing_ok=True)
                site_dirs = sorted(tmp.glob("lib/python*/site-packages"))
                if not site_dirs:
                    raise BuildError(f"the new environment has no site-packages directory ({tmp})")
                (site_dirs[0] / PTH_NAME).write_text(
                    "# Slipway: the model server's own packages, after the environment's (which take precedence).\n"
                    + "".join(f"import site; site.addsitedir({path!r})\n" for path in self._paths)
                )
                await self._step(
                    out,
                    "check that the model server runs with these requirements",
                    [str(python), "-c", "import replica.server"],
                    spec.workdir,
                )
                seconds = time.monotonic() - started
                (tmp / MARKER).write_text(
                    json.dumps(
                        {
                            "key": spec.key,
                            "requirements": list(spec.requirements),
                            "python": self.python,
                            "built_at": time.time(),
                            "build_seconds": round(seconds, 3),
                            "deployment_id": deployment.id,
                        },
                        indent=2,
                    )
                )
                if self.shared:
                    share_read_only(tmp)
                try:
                    os.rename(tmp, self.env_dir(spec.key))
                except OSError:
                    if not self.ready(spec.key):  # another controller finished the same environment first
                        raise
                self.installs += 1
                out.write(f"=== environment {spec.key} ready in {seconds:.1f} s\n")
            log.info("built environment %s in %.1f s for deployment %s", spec.key[:12], seconds, deployment.id)
            outcome = "succeeded"
            told = {deployment.id: deployment.model_id}
            told.update({w[0]: model_id for w, model_id in (waiting.waiters.items() if waiting else ())})
            for waiter, model_id in sorted(told.items()):
                await self._event_for(
                    model_id,
                    waiter,
                    "deployment.build_succeeded",
                    f"environment {spec.key[:12]} built in {seconds:.1f} s",
                )
        except BuildError:
            raise
        except asyncio.CancelledError:
            outcome = ""  # stopped, not ended
            raise
        except Exception as exc:  # anything unexpected is a failed build, reported to the user
            log.exception("building environment %s failed", spec.key[:12])
            raise BuildError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if outcome:
                self._on_built(outcome, time.monotonic() - started)

    async def _step(self, out, what: str, argv: list[str], cwd: pathlib.Path) -> None:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        env = {**without_secrets(os.environ), "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "NO_COLOR": "1"}
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(self.timeout_seconds):
                output, _ = await process.communicate()
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BuildError(f"could not {what}: timed out after {self.timeout_seconds:.0f} s") from None
        text = output.decode(errors="replace")
        out.write(text)
        out.flush()
        if process.returncode != 0:
            shown = [
                line for line in text.strip().splitlines() if not line.startswith(("Using Python ", "Using CPython "))
            ]
            tail = "\n".join(shown)[-ERROR_TAIL_CHARS:]
            raise BuildError(f"could not {what} (exit code {process.returncode}):\n{tail}")

    # --- bookkeeping ------------------------------------------------------------------

    def _append_log(self, deployment_id: str, line: str) -> None:
        with self.log_path(deployment_id).open("a", encoding="utf-8") as out:
            out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    async def _event(self, deployment, type_: str, message: str) -> None:
        await self._event_for(deployment.model_id, deployment.id, type_, message)

    async def _event_for(self, model_id: str, deployment_id: str, type_: str, message: str) -> None:
        if self._on_event is None:
            return
        try:
            await self._on_event(model_id, deployment_id, type_, message)
        except Exception:  # the event log is informative; a build does not fail for it
            log.exception("could not record event %s for %s", type_, deployment_id)

    def prune(
        self, digests: set[str], package_dir: Callable[[str], pathlib.Path], grace_seconds: float
    ) -> list[pathlib.Path]:
        """Take out the built environments that none of the packages `digests` runs in,
        not being built and built more than `grace_seconds` ago. Returns them moved
        aside, for the caller to delete off the event loop."""
        cutoff = time.time() - grace_seconds
        candidates = [
            entry
            for entry in self.envs_dir.iterdir()
            if not entry.name.startswith(".") and entry.name not in self._builds and entry.stat().st_mtime <= cutoff
        ]
        for digest in [d for d in self._specs if d not in digests]:
            del self._specs[digest]
        if not candidates:
            return []
        keep = set()
        for digest in digests:
            with contextlib.suppress(BuildError):
                spec = self._cached_spec(digest, package_dir(digest))
                if spec is not None:
                    keep.add(spec.key)
        doomed = []
        for entry in candidates:
            if entry.name not in keep:
                trash = (
                    self.envs_dir / f".tmp-{entry.name}-pruned-{next(self._counter)}"
                )  # removed at start if left over
                os.rename(entry, trash)
                doomed.append(trash)
        return doomed

    def _remove_leftovers(self) -> None:
        """Temporary directories of builds whose process is gone (a restart mid-build)."""
        for entry in self.envs_dir.glob(".tmp-*"):
            parts = entry.name.split("-")
            pid = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            if pid is not None and pid != os.getpid() and _alive(pid):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
