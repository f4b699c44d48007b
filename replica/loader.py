"""Importing, constructing and loading the user's model class."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import os
import sys
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

from replica.package import ENVIRONMENT_ENV_VAR, PackageConfig
from replica.secrets import Secrets, take_delivered
from replica.threads import ModelThreads


def import_paths(config: PackageConfig) -> list[str]:
    """The sys.path entries the package's model code imports from, in priority order."""
    paths = [config.model_dir, *config.external_package_dirs]
    if config.bundled_packages_dir.is_dir():
        paths.append(config.bundled_packages_dir)
    return [str(path) for path in paths]


def prepare_process(config: PackageConfig) -> None:
    """Environment variables, secrets and import paths; must happen before the model is imported."""
    take_delivered(os.environ)
    os.environ.update(config.environment_variables)
    for path in reversed(import_paths(config)):
        if path not in sys.path:
            sys.path.insert(0, path)


def import_model_class(config: PackageConfig) -> type:
    model_file = config.model_file
    if not model_file.is_file():
        raise ValueError(f"model file {model_file} does not exist")
    # A unique synthetic parent package makes relative imports (`from .helpers import x`)
    # work without the model module colliding with anything already in sys.modules.
    package_name = f"_slipway_model_{uuid.uuid4().hex[:12]}"
    package_spec = importlib.machinery.ModuleSpec(package_name, None, is_package=True)
    package_spec.submodule_search_locations = [str(model_file.parent)]
    sys.modules[package_name] = importlib.util.module_from_spec(package_spec)

    module_name = f"{package_name}.{model_file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, model_file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {model_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)

    model_class = getattr(module, config.model_class_name, None)
    if not isinstance(model_class, type):
        raise ValueError(f"model file {model_file} does not define class {config.model_class_name}")
    return model_class


def model_kwargs(config: PackageConfig) -> dict[str, Any]:
    return {
        "config": config.raw_dict(),
        "data_dir": config.data_dir,
        "secrets": Secrets(config.secret_defaults),
        "environment": model_environment(os.environ),
    }


def model_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """Truss's `environment` keyword: None unless the deployment is in an environment,
    then a description of it ({"name": "production"})."""
    name = environ.get(ENVIRONMENT_ENV_VAR, "")
    return {"name": name} if name else None


def construct(model_class: type, kwargs: dict[str, Any]) -> Any:
    """Pass only the keyword arguments __init__ accepts (all of them if it takes **kwargs)."""
    try:
        parameters = inspect.signature(model_class).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature
        return model_class()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return model_class(**kwargs)
    accepted = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return model_class(**{name: value for name, value in kwargs.items() if name in accepted})


async def load_model(config: PackageConfig, threads: ModelThreads) -> Any:
    """Import, construct and load() the model; import and load may be slow, so both run in a thread."""
    model_class = await threads.run(import_model_class, config)
    kwargs = model_kwargs(config)
    model = await threads.run(construct, model_class, kwargs)
    # Truss calls setup_environment(environment) before load() when the deployment is in an
    # environment (and again when that changes: environments here never change under a replica).
    if kwargs["environment"]:
        await _call_hook(model, "setup_environment", threads, kwargs["environment"])
    await _call_hook(model, "load", threads)
    return model


def describe_failure(exc: BaseException) -> str:
    """`Type: message`; an exception raised without a message says so (`raise Exception()`
    would read `Exception: ` otherwise), and the one it was raised from completes it."""
    message = str(exc).strip()
    name = type(exc).__name__
    if message:
        return f"{name}: {message}"
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        return f"{name} (no message), raised from {describe_failure(cause)}"
    return f"{name} (raised without a message)"


async def _call_hook(model: Any, name: str, threads: ModelThreads, *args: Any) -> None:
    """Call the model's `name` method if it has one: async on the loop, sync in a thread."""
    method = getattr(model, name, None)
    if method is None:
        return
    if inspect.iscoroutinefunction(method):
        await method(*args)
    else:
        result = await threads.run(method, *args)
        if inspect.isawaitable(result):
            await result


def model_traceback(exc: BaseException, config: PackageConfig | None) -> str:
    """The traceback of a failure in the model's code as its author wants to read it: only
    the frames of the package's own files (not the replica's, importlib's or asyncio's),
    with paths relative to the package root. A failure with no frame of the package (a
    missing class, a config.yaml that did not parse: `config` None) is its message alone;
    the replica's log keeps the full traceback."""
    if config is None:
        return "".join(traceback.format_exception_only(exc))
    roots = tuple(str(root) + os.sep for root in (config.package_dir, *config.external_package_dirs))
    formatted = traceback.TracebackException.from_exception(exc)
    part: traceback.TracebackException | None = formatted
    while part is not None:  # the exception and the ones it was raised from or during
        own = [frame for frame in part.stack if frame.filename.startswith(roots)]
        part.stack = traceback.StackSummary.from_list(own)
        part = part.__cause__ or (None if part.__suppress_context__ else part.__context__)
    return "".join(formatted.format()).replace(str(config.package_dir) + os.sep, "")
