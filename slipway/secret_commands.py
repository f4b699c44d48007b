"""`slipway secrets`: set, list and delete the secrets the platform hands to models."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from slipway.command_support import confirm, connect, emit, output_option
from slipway.limits import MAX_SECRET_BYTES
from slipway.render import SECRET_COLUMNS, table


@click.group()
def secrets() -> None:
    """Set, list and delete secrets. A replica gets a secret only if its package's config.yaml
    declares the name under `secrets:`; values are never shown again."""


@secrets.command("set")
@click.argument("name")
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the value from this file (default: standard input, without a trailing newline).",
)
@output_option
def secrets_set(name: str, from_file: Path | None, output: str) -> None:
    """Set secret NAME to the value read from standard input or --from-file."""
    if from_file is not None:
        with from_file.open("rb") as source:
            value = source.read(MAX_SECRET_BYTES + 1)
    else:
        if sys.stdin.isatty():
            click.echo(f"Value of {name} (end with Ctrl-D):", err=True)
        value = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1).removesuffix(b"\n")
    if len(value) > MAX_SECRET_BYTES:
        raise click.UsageError(f"the value of {name} is larger than {MAX_SECRET_BYTES} bytes")
    secret = connect().set_secret(name, value)
    emit(output, secret, lambda s: f"Set secret {s.name}; replicas started from now on get it.")


@secrets.command("list")
@output_option
def secrets_list(output: str) -> None:
    """List secret names (never values)."""
    emit(output, connect().list_secrets(), table(SECRET_COLUMNS, "No secrets."))


@secrets.command("delete")
@click.argument("name")
@click.option("--yes", "-y", "yes_flag", is_flag=True, help="Do not ask for confirmation.")
def secrets_delete(name: str, yes_flag: bool) -> None:
    """Delete secret NAME (running replicas keep the value they were started with)."""
    confirm(yes_flag, f"Delete secret {name}?")
    connect().delete_secret(name)
    click.echo(f"Deleted secret {name}.")
