"""`slipway init`: a new model package in the Truss layout.

The same files `truss init` writes (config.yaml, model/__init__.py, model/model.py),
so the package also works with Truss tooling, plus the keys Slipway reads filled in
with their defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

MODEL_PY = '''"""The model server calls `Model(**kwargs)`, then `load()` once, then `predict()` per request.

`preprocess(model_input)` and `postprocess(model_output)` are optional and run around
predict; any of them may be `async def`; a predict that yields (a generator) streams.
"""


class Model:
    def __init__(self, **kwargs):
        # kwargs: config (config.yaml as a dict), data_dir (the package's data/ directory),
        # secrets (the values of the secrets named in config.yaml), environment.
        self._config = kwargs.get("config", {})
        self._secrets = kwargs.get("secrets", {})
        self._model = None

    def load(self):
        # Load weights here (runs once per replica, before it takes traffic).
        self._model = lambda text: text[::-1]

    def predict(self, model_input):
        # model_input is the decoded JSON request body.
        text = model_input.get("text", "") if isinstance(model_input, dict) else str(model_input)
        return {"output": self._model(text)}
'''


def config_yaml(name: str) -> str:
    config = {
        "model_name": name,
        "description": "",
        "python_version": f"py{sys.version_info.major}{sys.version_info.minor}",
        "requirements": [],
        "environment_variables": {},
        "model_metadata": {"example_model_input": {"text": "hello"}},
        "secrets": {},
        "external_package_dirs": [],
        "system_packages": [],
        "resources": {"accelerator": None, "cpu": "1", "memory": "2Gi", "use_gpu": False},
        "runtime": {"predict_concurrency": 1},
    }
    return yaml.safe_dump(config, sort_keys=False)


def scaffold(directory: Path, name: str) -> list[Path]:
    """Write the package into `directory` (created; it must not hold files yet)."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} already exists and is not an empty directory")
    files = {
        directory / "config.yaml": config_yaml(name),
        directory / "model" / "__init__.py": "",
        directory / "model" / "model.py": MODEL_PY,
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)
