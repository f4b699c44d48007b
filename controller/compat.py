"""Truss config.yaml keys this platform cannot honour: refused or warned about at push.

A package in the Truss layout deploys unmodified when it only uses what a local
process runtime can give it. A key that asks for something this platform cannot
provide (system packages, a GPU, a custom image or server, build-time downloads) is
refused with INVALID_ARGUMENT / UNSUPPORTED_PACKAGE_CONFIG naming the key; a key
whose request is harmless to run without (an unknown key, a different minor Python
version, more memory than this machine has) produces a warning the user sees. Empty,
false and null values are what `truss init` writes for every unused key: they are
accepted silently, so a scaffold deploys as it is.

Pure functions over the parsed config; no gRPC, no SQL.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.errors import InvalidArgument
from replica.package import PackageConfig, read_requirements, secret_env_var

# Keys the platform honours, or that are informational (no runtime effect anywhere).
SUPPORTED_KEYS = frozenset(
    {
        "model_name",
        "description",
        "model_metadata",
        "environment_variables",
        "secrets",
        "requirements",
        "requirements_file",
        "runtime",
        "resources",
        "python_version",
        "model_module_dir",
        "model_class_filename",
        "model_class_name",
        "data_dir",
        "external_package_dirs",
        "bundled_packages_dir",
        "examples_filename",
        "spec_version",
        "input_type",
        "model_framework",
        "model_type",
        "live_reload",
        "apply_library_patches",
        "use_local_src",
        "build",
    }
)
# Non-empty values of these cannot be honoured here: refused (key → why).
REFUSED_KEYS = {
    "system_packages": "system packages are not installed by this platform (install them on the host)",
    "base_image": "replicas run as local processes, not in a custom base image",
    "docker_server": "custom Docker servers are not supported; package the model as a Model class",
    "build_commands": "build commands are not run by this platform",
    "external_data": "external data is not downloaded at build time; fetch it in load()",
    "model_cache": "weights cannot be fetched here (no model cache): download them in load()",
    "weights": "model weight delivery is not supported; fetch weights in load()",
    "cache_internal": "model weight caching is not supported; fetch weights in load()",
    "bdn": "BDN volume mounts are not supported",
    "trt_llm": "TensorRT-LLM engines are not supported (no GPU runtime)",
    "bis_llm": "BIS LLM deployments are not supported",
    "training_checkpoints": "deploying training checkpoints is not supported",
    "docker_auth": "custom images are not supported",
}
RUNTIME_HONOURED = frozenset({"predict_concurrency", "streaming_read_timeout"})
# runtime.transport kinds served: a websocket model's session has its own route whatever the kind
# says (as is_websocket_endpoint, which Truss derives from it).
SERVED_TRANSPORTS = frozenset({"http", "websocket"})
NESTED_OPTION_LINE = re.compile(r"^(-r|-c|--requirement|--constraint)(\s|=|$)")
PYTHON_VERSION = re.compile(r"(?:py)?(\d)\.?(\d+)")  # matched whole (fullmatch), as MEMORY
MEMORY = re.compile(r"([0-9.]+)\s*([KMGTPE]i?|k)?")
MEMORY_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
MEMORY_UNITS.update({f"{u}i": 1024 ** (i + 1) for i, u in enumerate("KMGTPE")})


@dataclass(frozen=True)
class Machine:
    """What this platform offers a replica: its Python and the host's size."""

    python: tuple[int, int] = (sys.version_info.major, sys.version_info.minor)
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_bytes: int = field(default_factory=lambda: _total_memory())
    # The secrets replicas can be handed, as SLIPWAY_SECRET_<NAME> variables (controller/secrets.py).
    secret_variables: frozenset[str] = frozenset()
    # Whether replicas can be given GPUs (the Ray runtime places them on a GPU node).
    accelerators: bool = False


def is_empty(value: Any) -> bool:
    """What `truss init` writes for an unused key: null, false, "", [], {} (recursively)."""
    if value is None or value is False or value == "":
        return True
    if isinstance(value, (list, tuple)):
        return all(is_empty(item) for item in value)
    if isinstance(value, Mapping):
        return all(is_empty(item) for item in value.values())
    return False


def check_package(config: PackageConfig, machine: Machine | None = None) -> list[str]:
    """Warnings for `config`; raises InvalidArgument (UNSUPPORTED_PACKAGE_CONFIG) naming
    every key that cannot be honoured."""
    machine = machine or Machine()
    raw = config.raw_dict()
    refusals: list[tuple[str, str]] = []
    warnings: list[str] = []

    for key, why in REFUSED_KEYS.items():
        if not is_empty(raw.get(key)):
            refusals.append((key, why))
    for key in sorted(set(raw) - SUPPORTED_KEYS - set(REFUSED_KEYS)):
        if not is_empty(raw[key]):
            warnings.append(f"config.yaml key {key!r} is not known to this platform and is ignored")

    _check_resources(raw.get("resources"), machine, refusals, warnings)
    _check_runtime(raw.get("runtime"), refusals, warnings)
    _check_build(raw.get("build"), refusals, warnings)
    _check_python_version(raw.get("python_version"), machine, refusals, warnings)
    _check_requirements(config, refusals, warnings)
    for name, value in (raw.get("secrets") or {}).items():
        if is_empty(value) and secret_env_var(str(name)) not in machine.secret_variables:
            warnings.append(
                f"secret {name!r} is not set (slipway secrets set {name}): the model's secrets[{str(name)!r}] "
                "raises SecretNotFound"
            )
    for entry, directory in zip(raw.get("external_package_dirs") or (), config.external_package_dirs, strict=False):
        if not directory.is_dir():
            warnings.append(
                f"external_package_dirs entry {entry!r} is not in the package (slipway push bundles "
                "directories outside it; other clients must archive them under .external/<index>)"
            )

    if refusals:
        keys = [key for key, _ in refusals]
        detail = "; ".join(f"{key}: {why}" for key, why in refusals)
        raise InvalidArgument(
            "UNSUPPORTED_PACKAGE_CONFIG",
            f"config.yaml asks for what this platform cannot provide ({detail}); remove or empty "
            f"{'this key' if len(keys) == 1 else 'these keys'} to deploy",
            key=keys[0],
            keys=",".join(keys),
        )
    return warnings


def _check_resources(resources: Any, machine: Machine, refusals: list, warnings: list) -> None:
    if is_empty(resources):
        return
    if not isinstance(resources, Mapping):
        refusals.append(("resources", f"must be a mapping, got {type(resources).__name__}"))
        return
    if resources.get("use_gpu") is True and not machine.accelerators:
        refusals.append(("resources.use_gpu", "GPUs are not supported: replicas run on the CPU"))
    accelerator = resources.get("accelerator")
    if isinstance(accelerator, Mapping):
        accelerator = accelerator.get("accelerator")
    if not is_empty(accelerator) and not machine.accelerators:
        refusals.append(("resources.accelerator", f"{accelerator!r} requested, but GPUs are not supported"))
    node_count = resources.get("node_count")
    if isinstance(node_count, int) and not isinstance(node_count, bool) and node_count > 1:
        refusals.append(("resources.node_count", "multi-node deployments are not supported"))
    cpu = _cpus(resources.get("cpu"))
    if cpu is None and not is_empty(resources.get("cpu")):
        refusals.append(("resources.cpu", f"{resources.get('cpu')!r} is not a CPU amount such as '1' or '500m'"))
    elif cpu is not None and cpu > machine.cpus:
        warnings.append(
            f"resources.cpu asks for {resources['cpu']} CPUs but this machine has {machine.cpus}; "
            "replicas share the machine's CPUs"
        )
    memory = _memory_bytes(resources.get("memory"))
    if memory is None and not is_empty(resources.get("memory")):
        refusals.append(("resources.memory", f"{resources.get('memory')!r} is not a memory amount such as '2Gi'"))
    elif memory is not None and memory > machine.memory_bytes:
        warnings.append(
            f"resources.memory asks for {resources['memory']} but this machine has "
            f"{machine.memory_bytes / 1024**3:.1f}Gi; the model may run out of memory"
        )
    for key in ("instance_type", "fabric"):
        if not is_empty(resources.get(key)):
            warnings.append(f"resources.{key} is ignored: replicas run on this machine")
    known = {"use_gpu", "accelerator", "node_count", "cpu", "memory", "instance_type", "fabric"}
    for key in sorted(set(resources) - known):
        if not is_empty(resources[key]):
            warnings.append(f"resources.{key} is not known to this platform and is ignored")


def _check_runtime(runtime: Any, refusals: list, warnings: list) -> None:
    if not isinstance(runtime, Mapping):
        return  # a malformed runtime is refused by the package parser
    transport = runtime.get("transport")
    kind = transport.get("kind") if isinstance(transport, Mapping) else transport
    if not is_empty(kind) and kind not in SERVED_TRANSPORTS:
        refusals.append(
            (
                "runtime.transport",
                f"{kind!r} transport is not supported (only http: predict and streaming, and websocket)",
            )
        )
    for key in sorted(set(runtime) - RUNTIME_HONOURED - {"transport", "is_websocket_endpoint"}):
        if not is_empty(runtime[key]):
            warnings.append(f"runtime.{key} is not supported by this platform and is ignored")


def _check_build(build: Any, refusals: list, warnings: list) -> None:
    if not isinstance(build, Mapping):
        if not is_empty(build):
            refusals.append(("build", f"must be a mapping, got {type(build).__name__}"))
        return
    server = build.get("model_server")
    if not is_empty(server) and server != "TrussServer":
        refusals.append(
            ("build.model_server", f"{server!r} is not supported; only the Model class server (TrussServer)")
        )
    for key in sorted(set(build) - {"model_server"}):
        if not is_empty(build[key]):
            warnings.append(f"build.{key} is not supported by this platform and is ignored")


def _check_python_version(value: Any, machine: Machine, refusals: list, warnings: list) -> None:
    if is_empty(value):
        return
    match = PYTHON_VERSION.fullmatch(str(value).strip())
    if match is None:
        refusals.append(("python_version", f"{value!r} is not a Python version such as 'py311'"))
        return
    wanted = (int(match[1]), int(match[2]))
    have = f"{machine.python[0]}.{machine.python[1]}"
    # Replicas run on the controller's interpreter: an older minor version's code runs on it (as
    # Truss maps an unsupported version to the nearest one it has, with a warning); a newer one's
    # may use syntax or modules it lacks.
    if wanted[0] != machine.python[0] or wanted > machine.python:
        refusals.append(
            (
                "python_version",
                f"Python {wanted[0]}.{wanted[1]} was asked for, which this machine cannot provide: replicas run on "
                f"Python {have}; set python_version to py{machine.python[0]}{machine.python[1]} or older",
            )
        )
    elif wanted != machine.python:
        warnings.append(
            f"python_version {value} asks for Python {wanted[0]}.{wanted[1]}; the model runs on this platform's "
            f"Python {have}"
        )


def _check_requirements(config: PackageConfig, refusals: list, warnings: list) -> None:
    try:
        lines = read_requirements(config)
    except ValueError as exc:
        raise InvalidArgument("MALFORMED_PACKAGE", f"malformed package: {exc}") from None
    for line in lines:
        if NESTED_OPTION_LINE.match(line):
            refusals.append(
                ("requirements_file", f"{line!r}: nested requirement or constraint files are not supported")
            )
    if config.requirements_file is not None and config.requirements_file.name == "uv.lock":
        warnings.append(
            "requirements_file uv.lock: the dependencies of the pyproject.toml next to it are installed; "
            "the lock's exact pins are not applied"
        )


def _cpus(value: Any) -> float | None:
    if isinstance(value, bool) or is_empty(value):
        return None
    text = str(value).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def _memory_bytes(value: Any) -> int | None:
    if isinstance(value, bool) or is_empty(value):
        return None
    match = MEMORY.fullmatch(str(value).strip())
    if match is None:
        return None
    try:
        return int(float(match[1]) * MEMORY_UNITS[match[2] or ""])
    except ValueError:
        return None


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63
