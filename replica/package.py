"""Reading a model package in the Truss layout.

Pure functions: nothing here imports the user's model or touches os.environ, so the
controller can use the same code to validate a pushed package.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
import types
from collections.abc import Mapping
from typing import Any

import yaml

CONFIG_FILENAME = "config.yaml"
SECRET_ENV_PREFIX = "SLIPWAY_SECRET_"
# The environment the deployment is in ("production"), unset or empty for none.
ENVIRONMENT_ENV_VAR = "SLIPWAY_ENVIRONMENT"
# Truss's default gap allowed between two chunks of a stream, and the longest accepted here.
DEFAULT_STREAMING_READ_TIMEOUT_SECONDS = 60
MAX_STREAMING_READ_TIMEOUT_SECONDS = 3600


@dataclasses.dataclass(frozen=True)
class PackageConfig:
    package_dir: pathlib.Path
    raw: Mapping[str, Any]
    model_name: str | None
    environment_variables: Mapping[str, str]
    model_metadata: Mapping[str, Any]
    # The secrets the package declares, each with its config.yaml default (often None).
    secret_defaults: Mapping[str, Any]
    predict_concurrency: int
    model_module_dir: str
    model_class_filename: str
    model_class_name: str
    data_dir: pathlib.Path
    external_package_dirs: tuple[pathlib.Path, ...]
    bundled_packages_dir: pathlib.Path
    requirements: tuple[str, ...]
    # `requirements_file`: a pip requirements file, pyproject.toml or uv.lock inside the package.
    requirements_file: pathlib.Path | None = None
    # runtime.streaming_read_timeout: a stream whose model yields nothing this long is ended.
    streaming_read_timeout: float = DEFAULT_STREAMING_READ_TIMEOUT_SECONDS

    @property
    def secret_names(self) -> tuple[str, ...]:
        return tuple(self.secret_defaults)

    @property
    def model_dir(self) -> pathlib.Path:
        return self.package_dir / self.model_module_dir

    @property
    def model_file(self) -> pathlib.Path:
        return self.model_dir / self.model_class_filename

    def raw_dict(self) -> dict[str, Any]:
        """A mutable deep copy of config.yaml, as the model's `config` kwarg."""
        return _thaw(self.raw)


def load_package_config(package_dir: pathlib.Path) -> PackageConfig:
    """Parse DIR/config.yaml; raise ValueError naming the problem if it is malformed."""
    package_dir = pathlib.Path(package_dir).resolve()
    if not package_dir.is_dir():
        raise ValueError(f"package directory {package_dir} does not exist")
    config_path = package_dir / CONFIG_FILENAME
    if not config_path.is_file():
        raise ValueError(f"{CONFIG_FILENAME} is missing from package {package_dir}")
    try:
        text = config_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{CONFIG_FILENAME} is not UTF-8 text: {exc}") from None
    raw = parse_config(text)
    runtime = _mapping(raw, "runtime")
    return PackageConfig(
        package_dir=package_dir,
        raw=_freeze(raw),
        model_name=_optional_str(raw, "model_name"),
        environment_variables=types.MappingProxyType(_environment_variables(raw)),
        model_metadata=_freeze(_mapping(raw, "model_metadata")),
        secret_defaults=types.MappingProxyType(_secret_defaults(raw)),
        predict_concurrency=_predict_concurrency(runtime),
        model_module_dir=_relative_path(raw, package_dir, "model_module_dir", "model"),
        model_class_filename=_model_class_filename(raw, package_dir),
        model_class_name=_identifier(raw, "model_class_name", "Model"),
        data_dir=package_dir / _relative_path(raw, package_dir, "data_dir", "data"),
        external_package_dirs=_external_package_dirs(raw, package_dir),
        bundled_packages_dir=package_dir / _relative_path(raw, package_dir, "bundled_packages_dir", "packages"),
        requirements=tuple(_str_list(raw, "requirements")),
        requirements_file=_requirements_file(raw, package_dir),
        streaming_read_timeout=_streaming_read_timeout(runtime),
    )


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader refusing aliases: every reference to an anchor is a full copy once loaded,
    so a few hundred bytes of nested aliases would expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ValueError(
                f"{CONFIG_FILENAME} uses the YAML alias *{event.anchor} (line {event.start_mark.line + 1}): "
                "aliases are not supported, write the value out"
            )
        return super().compose_node(parent, index)


def parse_config(text: str) -> dict[str, Any]:
    """The mapping in config.yaml's `text`; raise ValueError naming the problem.

    The one parser of config.yaml, for the controller, the replicas and the CLI.
    """
    try:
        raw = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"{CONFIG_FILENAME} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ValueError(f"{CONFIG_FILENAME} is nested too deeply") from None
    if raw is None:  # an empty file is an empty mapping: every key has a default
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{CONFIG_FILENAME} must be a mapping, got {type(raw).__name__}")
    return raw


def validate_package(package_dir: pathlib.Path) -> PackageConfig:
    """load_package_config plus: the model file exists, parses, and defines the class.

    The model is never imported: the check reads the file's syntax tree only.
    """
    config = load_package_config(package_dir)
    model_file = config.model_file
    shown = model_file.relative_to(config.package_dir)
    if not model_file.is_file():
        raise ValueError(f"model file {shown} is missing from package {config.package_dir}")
    try:
        tree = ast.parse(model_file.read_bytes(), filename=str(shown))
    except SyntaxError as exc:
        raise ValueError(f"model file {shown} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    if not _defines_name(tree, config.model_class_name):
        raise ValueError(f"model file {shown} does not define class {config.model_class_name}")
    return config


def read_requirements(config: PackageConfig) -> list[str]:
    """The package's Python requirements, one pip requirement (or option) line each.

    From `requirements`, or from `requirements_file`: a pip requirements file (comments,
    blank lines and `\\` continuations handled), a pyproject.toml ([project]
    dependencies), or a uv.lock (the dependencies of the pyproject.toml next to it,
    as Truss reads it). Raises ValueError if the file is missing or unreadable.
    """
    if config.requirements_file is None:
        return list(config.requirements)
    path = config.requirements_file
    shown = path.relative_to(config.package_dir)
    if path.name == "uv.lock":
        path = path.parent / "pyproject.toml"
    if not path.is_file():
        raise ValueError(
            f"requirements_file {shown}: {path.relative_to(config.package_dir)} is missing from the package"
        )
    text = path.read_text(encoding="utf-8")
    if path.name == "pyproject.toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise ValueError(f"requirements_file {shown}: reading pyproject.toml needs Python 3.11 or newer") from None
        try:
            dependencies = tomllib.loads(text).get("project", {}).get("dependencies", [])
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"requirements_file {shown} is not valid TOML: {exc}") from None
        if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
            raise ValueError(f"requirements_file {shown}: [project] dependencies must be a list of strings")
        return [d.strip() for d in dependencies if d.strip()]
    lines = []
    for line in text.replace("\\\n", "").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            lines.append(line)
    return lines


def secret_env_var(name: str) -> str:
    """The environment variable a secret is read from: SLIPWAY_SECRET_<NAME>."""
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less every secret: a process gets only the secrets its package declares."""
    return {name: value for name, value in environ.items() if not name.startswith(SECRET_ENV_PREFIX)}


def _secret_defaults(raw: Mapping[str, Any]) -> dict[str, str | None]:
    defaults = {}
    for name, value in _mapping(raw, "secrets").items():
        if isinstance(value, (dict, list)):
            raise ValueError(f"secrets.{name} must be a scalar default value, got {type(value).__name__}")
        defaults[str(name)] = None if value is None else str(value)
    return defaults


def _requirements_file(raw: Mapping[str, Any], package_dir: pathlib.Path) -> pathlib.Path | None:
    if raw.get("requirements_file") in (None, ""):
        return None
    if raw.get("requirements"):
        raise ValueError("requirements and requirements_file are mutually exclusive: use one of them")
    return package_dir / _relative_path(raw, package_dir, "requirements_file", "")


def _mapping(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a mapping, got {type(value).__name__}")
    return value


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    return str(value)


def _str_list(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key} must be a list of strings")
    return value


def _environment_variables(raw: Mapping[str, Any]) -> dict[str, str]:
    result = {}
    for name, value in _mapping(raw, "environment_variables").items():
        if isinstance(value, (dict, list)):
            raise ValueError(f"environment_variables.{name} must be a scalar, got {type(value).__name__}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        result[str(name)] = "" if value is None else str(value)
    return result


def _predict_concurrency(runtime: Mapping[str, Any]) -> int:
    value = runtime.get("predict_concurrency", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"runtime.predict_concurrency must be an integer >= 1, got {value!r}")
    return value


def _streaming_read_timeout(runtime: Mapping[str, Any]) -> float:
    value = runtime.get("streaming_read_timeout")
    if value is None:
        return DEFAULT_STREAMING_READ_TIMEOUT_SECONDS
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= MAX_STREAMING_READ_TIMEOUT_SECONDS
    ):
        raise ValueError(
            f"runtime.streaming_read_timeout must be a number of seconds in (0, {MAX_STREAMING_READ_TIMEOUT_SECONDS}], "
            f"got {value!r}"
        )
    return float(value)


def bundled_external_dir(index: int) -> str:
    """Where the `index`-th of external_package_dirs is bundled when it lies outside the
    package (Truss's usual `../shared`): the push archives it into the package there."""
    return f".external/{index}"


def _external_package_dirs(raw: Mapping[str, Any], package_dir: pathlib.Path) -> tuple[pathlib.Path, ...]:
    """The directories external_package_dirs puts on sys.path, all inside the package: the
    bundled copy when the push made one (it decided the entry lies outside), else the entry."""
    root = package_dir.resolve()
    dirs = []
    for index, entry in enumerate(_str_list(raw, "external_package_dirs")):
        bundled, where = root / bundled_external_dir(index), (root / entry).resolve()
        dirs.append(where if where.is_relative_to(root) and not bundled.is_dir() else bundled)
    return tuple(dirs)


def _relative_path(raw: Mapping[str, Any], package_dir: pathlib.Path, key: str, default: str) -> str:
    """A path inside the package; a package may not point outside itself."""
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    if pathlib.PurePath(value).is_absolute() or not (package_dir / value).resolve().is_relative_to(package_dir):
        raise ValueError(f"{key} must be a path inside the package, got {value!r}")
    return value


def _model_class_filename(raw: Mapping[str, Any], package_dir: pathlib.Path) -> str:
    value = _relative_path(raw, package_dir, "model_class_filename", "model.py")
    if not value.endswith(".py"):
        raise ValueError(f"model_class_filename must name a .py file, got {value!r}")
    return value


def _identifier(raw: Mapping[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value.isidentifier():
        raise ValueError(f"{key} must be a Python identifier, got {value!r}")
    return value


def _defines_name(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return True
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                # `from x import *` may bring the class in; only an import can tell.
                if alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == name:
                    return True
    return False


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return types.MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value
