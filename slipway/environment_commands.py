"""`slipway environments`: create, list, show, scale and delete a model's environments
(promote into one with `slipway deployments promote ID --environment NAME` or
`slipway push --promote --environment NAME`)."""

from __future__ import annotations

from typing import Any

import click
from google.protobuf import field_mask_pb2

from slipway.command_support import confirm, connect, emit, output_option
from slipway.render import Columns, autoscaling_line, render_details, table, timestamp
from slipway.v1 import environment_service_pb2 as es
from slipway.v1 import resources_pb2 as res

ENVIRONMENT_COLUMNS: Columns = [
    ("NAME", lambda e: e.name),
    ("DEPLOYMENT", lambda e: e.deployment_id or "-"),
    ("PROMOTING", lambda e: e.promoting_deployment_id or "-"),
    ("AUTOSCALING", lambda e: autoscaling_line(e.autoscaling_settings)),
    ("CREATED", lambda e: timestamp(e.create_time)),
]
SETTINGS = tuple(res.AutoscalingSettings.DESCRIPTOR.fields_by_name)


def environment_details(e: es.ModelEnvironment) -> str:
    return render_details(
        [
            ("Model", e.model_id),
            ("Name", e.name),
            ("Deployment", e.deployment_id or "-"),
            ("Promoting", e.promoting_deployment_id),
            ("Autoscaling", autoscaling_line(e.autoscaling_settings)),
            ("Created", timestamp(e.create_time)),
            ("Updated", timestamp(e.update_time)),
            ("Deleted", timestamp(e.delete_time)),
        ]
    )


def model_option(command: Any) -> Any:
    return click.option("--model", required=True, help="The model (ID or name).")(command)


def autoscaling_options(command: Any) -> Any:
    for name in reversed(SETTINGS):
        seconds = " Seconds." if name in ("autoscaling_window", "scale_down_delay") else ""
        command = click.option(f"--{name.replace('_', '-')}", name, type=int, help=f"{name}.{seconds}")(command)
    return command


@click.group()
def environments() -> None:
    """A model's environments: production (always) and named ones such as staging, each with a
    stable endpoint (/model/{id}/environments/{name}/predict) and its own autoscaling."""


@environments.command("list")
@model_option
@output_option
def environments_list(model: str, output: str) -> None:
    """List the model's environments, production first."""
    client = connect()
    # A model has at most 33 environments: one page (of up to 100).
    listed = client.environments.ListEnvironments(es.ListEnvironmentsRequest(model_id=model), timeout=client.timeout)
    emit(output, list(listed.environments), table(ENVIRONMENT_COLUMNS, "No environments."))


@environments.command("get")
@model_option
@click.argument("name")
@output_option
def environments_get(model: str, name: str, output: str) -> None:
    """Show environment NAME."""
    client = connect()
    found = client.environments.GetEnvironment(
        es.GetEnvironmentRequest(model_id=model, name=name), timeout=client.timeout
    )
    emit(output, found.environment, environment_details)


@environments.command("create")
@model_option
@click.argument("name")
@autoscaling_options
@click.option("--request-id", default="", help="Idempotency key: a retried call with the same key is applied once.")
@output_option
def environments_create(model: str, name: str, request_id: str, output: str, **settings: int | None) -> None:
    """Create environment NAME (lowercase letters, digits and '-'; at most 32 characters), with the
    default autoscaling settings but those given (a 0 is set with `environments autoscaling`)."""
    client = connect()
    given = {k: v for k, v in settings.items() if v is not None}
    request = es.CreateEnvironmentRequest(
        model_id=model,
        environment=es.ModelEnvironment(name=name, autoscaling_settings=res.AutoscalingSettings(**given)),
        request_id=request_id,
    )
    created = client.environments.CreateEnvironment(request, timeout=client.timeout).environment
    emit(output, created, lambda e: f"Created environment {e.name} of model {e.model_id}.")


@environments.command("autoscaling")
@model_option
@click.argument("name")
@autoscaling_options
@output_option
def environments_autoscaling(model: str, name: str, output: str, **settings: int | None) -> None:
    """Show the autoscaling settings of environment NAME, or change the ones given (its deployment's
    change with them)."""
    client = connect()
    given = {k: v for k, v in settings.items() if v is not None}
    if given:
        request = es.UpdateEnvironmentRequest(
            environment=es.ModelEnvironment(
                model_id=model, name=name, autoscaling_settings=res.AutoscalingSettings(**given)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=[f"autoscaling_settings.{k}" for k in given]),
        )
        shown = client.environments.UpdateEnvironment(request, timeout=client.timeout).environment
    else:
        request_get = es.GetEnvironmentRequest(model_id=model, name=name)
        shown = client.environments.GetEnvironment(request_get, timeout=client.timeout).environment
    emit(output, shown, environment_details)


@environments.command("delete")
@model_option
@click.argument("name")
@click.option("--yes", "-y", "yes_flag", is_flag=True, help="Do not ask for confirmation.")
@click.option("--request-id", default="", help="Idempotency key: a retried call with the same key is applied once.")
def environments_delete(model: str, name: str, yes_flag: bool, request_id: str) -> None:
    """Delete environment NAME: its endpoint answers 404; its deployment stays published."""
    confirm(yes_flag, f"Delete environment {name} of model {model}?")
    client = connect()
    request = es.DeleteEnvironmentRequest(model_id=model, name=name, request_id=request_id)
    deleted = client.environments.DeleteEnvironment(request, timeout=client.timeout).environment
    kept = f"; deployment {deleted.deployment_id} stays published" if deleted.deployment_id else ""
    click.echo(f"Deleted environment {name}{kept}.")
