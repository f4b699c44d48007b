"""The CLI's package commands: push (a deployment from a package), watch (live reload),
init (a new package in the Truss layout).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from slipway.command_support import (
    connect,
    output_option,
    push_package,
    timeout_option,
)
from slipway.packaging import read_model_name


@click.command()
@click.argument("directory", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--publish", is_flag=True, help="Create a new published deployment.")
@click.option("--promote", is_flag=True, help="Create a published deployment and make it production once active.")
@click.option("--deployment-name", default="", help="Name of the published deployment (default deployment-N).")
@click.option("--model-name", default="", help="The model to push to (default: config.yaml's model_name).")
@click.option(
    "--environment",
    default="",
    help="Promote the pushed deployment into this environment once active (production: the same as --promote).",
)
@click.option(
    "--preserve-previous-production-deployment",
    "preserve_previous_production",
    is_flag=True,
    help="With --promote: keep the former production's autoscaling settings (always done here).",
)
@click.option(
    "--metadata",
    "--labels",
    "metadata",
    default="",
    help="A JSON object of key-value pairs, recorded in the deployment's event log.",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the deployment until it serves.")
@click.option("--request-id", default="", help="Idempotency key: a retried push with the same key is applied once.")
@click.option("--watch", "watch_changes", is_flag=True, help="Then live-reload every change (see `slipway watch`).")
@click.option(
    "--timeout", "--timeout-seconds", "timeout", type=float, default=300.0, show_default=True, help="Seconds to wait."
)
@output_option
def push(
    directory: Path,
    publish: bool,
    promote: bool,
    deployment_name: str,
    model_name: str,
    environment: str,
    preserve_previous_production: bool,
    metadata: str,
    wait: bool,
    request_id: str,
    watch_changes: bool,
    timeout: float,
    output: str,
) -> None:
    """Push the model package in DIRECTORY (default: the current directory).

    Without options this creates or updates the model's development deployment.
    """
    if environment:  # implies --promote (as truss push --environment does)
        promote = True
        environment = "" if environment == "production" else environment
    if publish and promote:
        raise click.UsageError("--publish and --promote are mutually exclusive")
    if deployment_name and not (publish or promote):
        raise click.UsageError("--deployment-name needs --publish or --promote (development is always 'development')")
    if watch_changes and (publish or promote):
        raise click.UsageError("--watch live-reloads the development deployment: it excludes --publish and --promote")
    if preserve_previous_production and not promote:
        raise click.UsageError("--preserve-previous-production-deployment needs --promote")
    target = "production" if promote else "published" if publish else "development"
    if not model_name and not read_model_name(directory) and sys.stdin.isatty():
        model_name = click.prompt("config.yaml sets no model_name; what's the name of your model?")
    client = connect()
    push_package(
        client,
        directory,
        target,
        deployment_name,
        request_id,
        wait,
        timeout,
        output,
        model_name,
        _metadata(metadata),
        environment,
    )
    if watch_changes:
        from slipway.watch import watch_package

        watch_package(client, directory, timeout, model_name)


def _metadata(text: str) -> dict:
    """--metadata: a JSON object, as truss push takes it."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise click.UsageError(f"--metadata is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise click.UsageError(f"--metadata must be a JSON object, got {type(value).__name__}")
    return value


@click.command()
@click.argument("directory", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@timeout_option
def watch(directory: Path, timeout: float) -> None:
    """Live-reload the model package in DIRECTORY (default: the current directory).

    Pushes it as the model's development deployment unless that already runs it,
    then sends every change as a patch: model code is reloaded in place, config
    changes the model depends on restart the replica. One line per change.
    """
    from slipway.watch import watch_package

    watch_package(connect(), directory, timeout)


@click.command()
@click.argument("name")
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to create the package (default: ./NAME).",
)
def init(name: str, directory: Path | None) -> None:
    """Create a new model package NAME (Truss layout: config.yaml, model/model.py)."""
    from slipway.scaffold import scaffold

    target = directory or Path(name)
    try:
        scaffold(target, name)
    except FileExistsError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Created model package {name!r} in {target}")
    click.echo(f"Deploy it:  slipway push {target}")
