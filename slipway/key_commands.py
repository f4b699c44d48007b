"""`slipway keys create|list|revoke`: user API keys (needs an admin key)."""

from __future__ import annotations

import re

import click

from slipway.client import KEY_SCOPES
from slipway.command_support import connect, emit, output_option
from slipway.render import KEY_COLUMNS, table

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w`, `45s` → seconds."""
    match = _DURATION.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise click.BadParameter(f"{text!r} is not a duration such as 30d, 12h, 90m", param_hint="--expires")
    return int(match[1]) * _UNIT_SECONDS[match[2]]


@click.group()
def keys() -> None:
    """User API keys: create (shown once), list, revoke."""


@keys.command("create")
@click.option("--scope", type=click.Choice(list(KEY_SCOPES)), required=True, help="What the key may call.")
@click.option("--model", "models", multiple=True, help="Inference keys: only this model (ID or name); repeatable.")
@click.option("--expires", help="The key expires after this long (30d, 12h, 90m, 2w).")
@click.option("--name", default="", help="A label for people.")
@output_option
def create(scope: str, models: tuple[str, ...], expires: str | None, name: str, output: str) -> None:
    """Create a key and print it (the only time it is shown)."""
    ttl = parse_duration(expires) if expires else None
    created = connect().create_key(scope, models, ttl, name)
    if output == "json":
        emit(output, created, str)
        return
    click.echo(table(KEY_COLUMNS, "")([created.key]))
    click.echo(f"\nKey (shown only now): {created.secret_key}")
    click.echo(f"Send it as:  Authorization: Api-Key {created.secret_key}   (or SLIPWAY_API_KEY for the CLI)")


@keys.command("list")
@click.option("--all", "show_revoked", is_flag=True, help="Include revoked keys.")
@output_option
def list_keys(show_revoked: bool, output: str) -> None:
    """Keys by public prefix, scope, models, creation, last use and expiry (never the key)."""
    emit(output, connect().list_keys(show_revoked), table(KEY_COLUMNS, "No keys."))


@keys.command("revoke")
@click.argument("key_id")
@output_option
def revoke(key_id: str, output: str) -> None:
    """Revoke a key: every gateway refuses it within about a second."""
    emit(output, connect().revoke_key(key_id), lambda key: f"Revoked key {key.id} ({key.display_prefix}…).")
