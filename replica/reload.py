"""Live reload: serve the model of another package directory without restarting.

The new package's model is imported as fresh module objects, constructed and
loaded while the current model keeps serving; only then is its predictor swapped
in (calls in flight finish on the old one). Modules imported from the old package
are dropped from sys.modules first so that the new code's imports see the new
files; if anything fails, sys.modules and sys.path are put back and the old model
goes on serving.

Environment variables, requirements and predict_concurrency are not reloaded: the
controller restarts the replica when config.yaml changes those.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pathlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from replica.loader import describe_failure, import_paths, load_model, model_traceback
from replica.log import Logger
from replica.metrics import METRICS
from replica.package import PackageConfig, load_package_config
from replica.predictor import Predictor
from replica.threads import ModelThreads


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    seconds: float = 0.0
    error: str = ""
    traceback: str = ""


class ModelReloader:
    def __init__(
        self,
        config: PackageConfig,
        threads: ModelThreads,
        attach: Callable[[Predictor], None],
        log: Logger,
        max_buffered_bytes: int,
    ) -> None:
        self._config = config
        self._threads = threads
        self._max_buffered_bytes = max_buffered_bytes
        self._attach = attach
        self._log = log
        self._lock = asyncio.Lock()

    async def reload(self, package_dir: pathlib.Path) -> ReloadOutcome:
        async with self._lock:
            if pathlib.Path(package_dir).resolve() == self._config.package_dir:
                return ReloadOutcome(ok=True)
            started = time.monotonic()
            config: PackageConfig | None = None
            try:
                config = load_package_config(package_dir)
                predictor = await self._load(config)
            except (Exception, SystemExit) as exc:  # a model module may call sys.exit()
                return self._failed(exc, time.monotonic() - started, config)
            self._config = config
            self._attach(predictor)
            seconds = time.monotonic() - started
            METRICS.load_seconds.set(seconds)
            self._log.info("model_reloaded", package=str(config.package_dir), seconds=round(seconds, 3))
            return ReloadOutcome(ok=True, seconds=seconds)

    async def _load(self, config: PackageConfig) -> Predictor:
        imports = ImportSwitch(self._config, config)
        try:
            model = await load_model(config, self._threads)
            return Predictor(model, config, self._threads, self._max_buffered_bytes)
        except BaseException:
            imports.undo()
            raise

    def _failed(self, exc: BaseException, seconds: float, config: PackageConfig | None) -> ReloadOutcome:
        error = describe_failure(exc)
        self._log.error("model_reload_failed", error=error, traceback="".join(traceback.format_exception(exc)))
        return ReloadOutcome(ok=False, seconds=seconds, error=error, traceback=model_traceback(exc, config))


class ImportSwitch:
    """Points sys.path at the new package and forgets the old package's modules; undoable."""

    def __init__(self, old: PackageConfig, new: PackageConfig) -> None:
        self._new_root = new.package_dir
        self._saved_path = list(sys.path)
        self._saved_modules = _modules_under(old.package_dir)
        for name in self._saved_modules:
            del sys.modules[name]
        old_paths, new_paths = import_paths(old), import_paths(new)
        sys.path[:] = new_paths + [p for p in sys.path if p not in old_paths and p not in new_paths]
        importlib.invalidate_caches()

    def undo(self) -> None:
        for name in _modules_under(self._new_root):
            del sys.modules[name]
        sys.modules.update(self._saved_modules)
        sys.path[:] = self._saved_path


def _modules_under(root: pathlib.Path) -> dict[str, ModuleType]:
    """Modules whose file (or package directory) lies inside `root`.

    A plain prefix test is enough: package paths are resolved, and modules of the
    package were imported through sys.path entries and file paths made from them.
    """
    prefix = str(root) + os.sep
    found = {}
    for name, module in list(sys.modules.items()):
        locations = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])]
        if any(isinstance(location, str) and location.startswith(prefix) for location in locations):
            found[name] = module
    return found
