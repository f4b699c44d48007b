"""The `secrets` a model is constructed with, with Truss's semantics.

A model reads `secrets["name"]`. The value is the one the platform handed this replica
(a platform secret, or the operator's SLIPWAY_SECRET_<NAME> variable), else the default
written under `secrets:` in config.yaml. A name the package does not declare, or a
declared one with no value, raises SecretNotFound naming the secret (the request fails
with a 500 that says so) instead of handing the model None. As in Truss, the mapping
cannot be iterated: it is for lookups.

The replica takes its secrets out of os.environ when it starts (take_delivered), so the
processes a model starts do not inherit them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from replica.package import SECRET_ENV_PREFIX, secret_env_var

# A replica serves one deployment: what it was handed at start is the process's.
_delivered: dict[str, str] = {}


class SecretNotFound(Exception):
    pass


def take_delivered(environ: MutableMapping[str, str]) -> None:
    """Move the SLIPWAY_SECRET_* variables out of `environ` (once, at start)."""
    for name in [name for name in environ if name.startswith(SECRET_ENV_PREFIX)]:
        _delivered[name] = environ.pop(name)


class Secrets(Mapping):
    def __init__(self, declared: Mapping[str, Any]) -> None:
        self._declared = declared

    def __getitem__(self, name: str) -> str:
        if name not in self._declared:
            raise SecretNotFound(f"Secret '{name}' not specified in the config.")
        value = _delivered.get(secret_env_var(name))
        if not value:
            default = self._declared[name]
            value = None if default is None else str(default)
        if not value:
            raise SecretNotFound(
                f"Secret '{name}' not found: set it with `slipway secrets set {name}` "
                "(or SLIPWAY_SECRET_* on the controller) and restart the deployment."
            )
        return value

    def __iter__(self) -> Iterator[str]:
        raise NotImplementedError("Secrets are meant for lookup and can't be iterated on")

    def __len__(self) -> int:
        return len(self._declared)
