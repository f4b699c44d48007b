"""Platform-managed secrets: stored encrypted, readable only by the controller, handed
only to replicas whose package declares them.

Values are encrypted with AES-GCM under a key kept in `<data_dir>/secrets.key` (0600, next
to the database, never in it), the secret's name bound as associated data so a ciphertext
cannot be moved to another name. A copy of the database alone reveals names, not values.

Operators who prefer the environment may still start the controller with
SLIPWAY_SECRET_<NAME> variables: they are read once, at start, and removed from the
controller's own environment; a secret set through the API takes precedence.
"""

from __future__ import annotations

import os
import pathlib
import re
import time
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.errors import FailedPrecondition, InvalidArgument, NotFound
from controller.store import SecretRow, Store
from replica.package import SECRET_ENV_PREFIX, secret_env_var
from slipway.limits import MAX_SECRET_BYTES

KEY_FILENAME = "secrets.key"
NONCE_BYTES = 12
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class SecretLimits:
    max_value_bytes: int = MAX_SECRET_BYTES
    max_secrets: int = 1000


class SecretBox:
    """AES-256-GCM with the data directory's key, created on first use."""

    def __init__(self, key_path: pathlib.Path) -> None:
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = key_path.read_bytes()
        else:
            key = AESGCM.generate_key(bit_length=256)
            with os.fdopen(fd, "wb") as out:
                out.write(key)
        self._aead = AESGCM(key)

    def seal(self, name: str, value: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value, name.encode())

    def open(self, name: str, sealed: bytes) -> bytes:
        return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())


def take_environment_secrets(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Remove every SLIPWAY_SECRET_* variable from `environ`; returns them."""
    taken = {name: value for name, value in environ.items() if name.startswith(SECRET_ENV_PREFIX)}
    for name in taken:
        del environ[name]
    return taken


class Secrets:
    """The secrets API over the store, and what a replica of a package is handed."""

    def __init__(self, store: Store, box: SecretBox, from_environment: Mapping[str, str], limits: SecretLimits) -> None:
        self._store = store
        self._box = box
        self._from_environment = dict(from_environment)
        self._limits = limits
        self._stored: set[str] = set()  # names, for the warnings of a push (available_variables)

    async def load(self) -> None:
        self._stored = {row.name for row in await self._store.list_secrets()}

    def available_variables(self) -> frozenset[str]:
        """The SLIPWAY_SECRET_* variables a replica can be handed now."""
        return frozenset(self._from_environment) | {secret_env_var(name) for name in self._stored}

    async def set(self, name: str, value: bytes) -> SecretRow:
        _check_name(name)
        if len(value) > self._limits.max_value_bytes:
            raise InvalidArgument(
                "SECRET_TOO_LARGE",
                f"secret {name} is {len(value)} bytes; the largest is {self._limits.max_value_bytes}",
                name=name,
            )
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("SECRET_NOT_TEXT", f"secret {name} is not UTF-8 text", name=name) from None
        async with self._store.write() as tx:
            names = {row.name for row in await tx.list_secrets()}
            if name not in names and len(names) >= self._limits.max_secrets:
                raise FailedPrecondition(
                    "TOO_MANY_SECRETS", f"there are {len(names)} secrets already, the most there may be"
                )
            await tx.put_secret(name, self._box.seal(name, value), time.time())
            (row,) = await tx.get_secrets([name])
        self._stored.add(name)
        return row

    async def list(self) -> list[SecretRow]:
        return await self._store.list_secrets()

    async def delete(self, name: str) -> None:
        _check_name(name)
        async with self._store.write() as tx:
            if not await tx.delete_secret(name):
                raise NotFound("SECRET_NOT_FOUND", f"there is no secret named {name}", name=name)
        self._stored.discard(name)

    async def environ_for(self, declared: Iterable[str]) -> dict[str, str]:
        """The SLIPWAY_SECRET_* variables of the secrets a package declares, and no other."""
        declared = list(declared)
        variables = {secret_env_var(name): name for name in declared}
        environ = {var: self._from_environment[var] for var in variables if var in self._from_environment}
        for row in await self._store.get_secrets(declared):
            environ[secret_env_var(row.name)] = self._box.open(row.name, row.ciphertext).decode()
        return environ


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise InvalidArgument(
            "INVALID_SECRET_NAME",
            f"secret name {name[:128]!r} must be 1-128 letters, digits, '_', '-' or '.'",
        )
