"""The client commands of the CLI: models, deployments, predict, usage, events.

Each is a client of the controller's (or, for predict, the gateway's) public API;
slipway/cli.py puts them under the root `slipway` group.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from slipway import request_commands
from slipway.client import state_name
from slipway.command_support import (
    confirm,
    connect,
    deployment_options,
    emit,
    output_option,
    resolve_deployment_id,
    resolve_model_id,
    root_api_key,
    timeout_option,
    wait_for_promotion,
)
from slipway.inference_client import InferenceClient
from slipway.render import (
    DEPLOYMENT_COLUMNS,
    EVENT_COLUMNS,
    MODEL_COLUMNS,
    USAGE_COLUMNS,
    autoscaling_details,
    deployment_details,
    deployment_line,
    model_details,
    table,
)


@click.group()
def models() -> None:
    """List, show and delete models."""


@models.command("list")
@output_option
def models_list(output: str) -> None:
    """List models."""
    emit(output, connect().list_models(), table(MODEL_COLUMNS, "No models."))


@models.command("get")
@click.argument("model")
@output_option
def models_get(model: str, output: str) -> None:
    """Show MODEL (an ID or a name)."""
    emit(output, connect().get_model(model), model_details)


@models.command("delete")
@click.argument("model")
@click.option("--yes", "-y", "yes_flag", is_flag=True, help="Do not ask for confirmation.")
@output_option
def models_delete(model: str, yes_flag: bool, output: str) -> None:
    """Delete MODEL and all its deployments, production included."""
    confirm(yes_flag, f"Delete model {model} and all its deployments, production included?")
    deleted = connect().delete_model(model)
    emit(output, deleted, lambda m: f"Deleted model {m.name} ({m.id}).")


@click.group()
def deployments() -> None:
    """List, show, promote, (de)activate, rename, scale and delete deployments."""


@deployments.command("list")
@click.option("--model", default="", help="Only this model's deployments (ID or name).")
@click.option("--show-deleted", is_flag=True, help="Include deleted deployments.")
@output_option
def deployments_list(model: str, show_deleted: bool, output: str) -> None:
    """List deployments."""
    client = connect()
    items = client.list_deployments(resolve_model_id(client, model), show_deleted)
    emit(output, items, table(DEPLOYMENT_COLUMNS, "No deployments."))


@deployments.command("get")
@deployment_options
@output_option
def deployments_get(model: str, deployment: str, output: str) -> None:
    """Show a deployment and its replicas."""
    client = connect()
    emit(output, client.get_deployment(resolve_deployment_id(client, model, deployment)), deployment_details)


def deployment_action(name: str, method: str, help_text: str) -> None:
    """Registers `slipway deployments NAME DEPLOYMENT` calling SlipwayClient.METHOD(ID)."""

    @deployments.command(name, help=help_text)
    @deployment_options
    @output_option
    def command(model: str, deployment: str, output: str) -> None:
        client = connect()
        emit(output, getattr(client, method)(resolve_deployment_id(client, model, deployment)), deployment_line)


deployment_action("activate", "activate_deployment", "Start a deactivated deployment again.")
deployment_action(
    "deactivate", "deactivate_deployment", "Stop its replicas; it stays listed, its endpoints answer 404."
)
deployment_action("wake", "wake_deployment", "Start a scaled-to-zero deployment ahead of traffic.")


@deployments.command("delete")
@deployment_options
@click.option("--yes", "-y", "yes_flag", is_flag=True, help="Do not ask for confirmation.")
@output_option
def deployments_delete(model: str, deployment: str, yes_flag: bool, output: str) -> None:
    """Delete a deployment (not production). This cannot be undone."""
    client = connect()
    deployment_id = resolve_deployment_id(client, model, deployment)
    confirm(yes_flag, f"Delete deployment {deployment_id}? This cannot be undone.")
    emit(output, client.delete_deployment(deployment_id), lambda d: f"Deleted deployment {d.name} ({d.id}).")


@deployments.command("rename")
@deployment_options
@click.argument("new_name")
@output_option
def deployments_rename(model: str, deployment: str, new_name: str, output: str) -> None:
    """Rename a published deployment."""
    client = connect()
    renamed = client.rename_deployment(resolve_deployment_id(client, model, deployment), new_name)
    emit(output, renamed, lambda d: f"Renamed {d.id} to {d.name}.")


@deployments.command("promote")
@deployment_options
@click.option("--environment", default="production", show_default=True, help="The environment to promote into.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it is the environment's.")
@timeout_option
@output_option
def deployments_promote(model: str, deployment: str, environment: str, wait: bool, timeout: float, output: str) -> None:
    """Make a deployment production's (or --environment's). Promoting development creates a new
    published deployment."""
    client = connect()
    into = "" if environment == "production" else environment
    promoted = client.promote_deployment(resolve_deployment_id(client, model, deployment), environment=into)
    if not promoted.completed and wait:
        wait_for_promotion(client, promoted.deployment, timeout, environment)
        promoted.deployment.CopyFrom(client.get_deployment(promoted.deployment.id))
        promoted.completed = True

    def render(p: Any) -> str:
        d = p.deployment
        if p.completed:
            return f"Deployment {d.name} ({d.id}) is {environment}."
        return f"Deployment {d.name} ({d.id}) becomes {environment} once active (now {state_name(d.state)})."

    emit(output, promoted, render)


@deployments.command("autoscaling")
@deployment_options
@click.option("--min-replica", type=int)
@click.option("--max-replica", type=int)
@click.option("--autoscaling-window", type=int, help="Seconds.")
@click.option("--scale-down-delay", type=int, help="Seconds.")
@click.option("--concurrency-target", type=int)
@click.option("--target-utilization-percentage", type=int)
@output_option
def deployments_autoscaling(model: str, deployment: str, output: str, **settings: int | None) -> None:
    """Show the autoscaling settings, or change only the ones given."""
    client = connect()
    deployment_id = resolve_deployment_id(client, model, deployment)
    given: dict[str, Any] = {name: value for name, value in settings.items() if value is not None}
    if given:
        shown = client.update_autoscaling(deployment_id, **given)
    else:
        shown = client.get_deployment(deployment_id)
    emit(output, shown.autoscaling_settings, lambda _: autoscaling_details(shown))


@click.command()
@click.option("--model", default="", help="Only this model's deployments (ID or name).")
@output_option
def usage(model: str, output: str) -> None:
    """Replica time per deployment (deleted deployments included)."""
    client = connect()
    emit(output, client.list_usage(resolve_model_id(client, model)), table(USAGE_COLUMNS, "No usage."))


@click.command()
@click.option("--model", default="", help="Only this model's events (ID or name).")
@click.option(
    "--deployment",
    default="",
    help="Only this deployment's events (an ID; with --model also a name, 'development' or 'production').",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the most recent N events.")
@output_option
def events(model: str, deployment: str, limit: int | None, output: str) -> None:
    """The lifecycle event log, oldest first."""
    client = connect()
    deployment_id = resolve_deployment_id(client, model, deployment) if deployment else ""
    items = client.list_events(resolve_model_id(client, model), deployment_id, limit)
    emit(output, items, table(EVENT_COLUMNS, "No events."))


@click.command()
@click.argument("target", metavar="MODEL_OR_DEPLOYMENT")
@click.argument("payload", metavar="[JSON]", required=False)
@click.option(
    "--deployment",
    "deployment_id",
    default="",
    help="Call this deployment of the model instead of production ('development' for the development one).",
)
@click.option(
    "--environment", default="", help="Call this environment of the model (staging, ...) instead of production."
)
@click.option("--stream", is_flag=True, help="Print the chunks of a streaming model as they come.")
@request_commands.async_options
@timeout_option
def predict(
    target: str, payload: str | None, deployment_id: str, environment: str, stream: bool, timeout: float, **queued: Any
) -> None:
    """Call a model (its production deployment) or a deployment through the gateway.

    JSON defaults to standard input. With --async the request is queued and its ID printed
    (see `slipway requests`).
    """
    if payload is None:
        payload = sys.stdin.read()
    try:
        json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="JSON") from None
    if deployment_id and environment:
        raise click.UsageError("--deployment and --environment each name the target: give one")
    if request_commands.wanted(queued):
        request_commands.async_predict(target, payload, deployment_id, environment, timeout=timeout, **queued)
        return
    root = click.get_current_context().find_root().params
    client = InferenceClient(root["gateway"], ca_file=root["tls_ca"], api_key=root_api_key())
    try:
        if not stream:
            answer = client.predict(target, payload, deployment_id, timeout, environment)
            click.echo(answer.decode("utf-8", "replace"))
            return
        sys.stdout.flush()
        out = sys.stdout.buffer
        chunk = b"\n"
        for chunk in client.predict_stream(target, payload, deployment_id, timeout, environment):
            out.write(chunk)
            out.flush()
        if not chunk.endswith(b"\n"):
            out.write(b"\n")
    finally:
        client.close()
