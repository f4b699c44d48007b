"""The client commands of the CLI: push, watch, models, deployments, predict, usage, events.

Each is a client of the controller's (or, for predict, the gateway's) public API;
slipway/cli.py puts them under the root `slipway` group.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf.message import Message

from slipway.client import (
    DeploymentFailed,
    InferenceClient,
    SlipwayClient,
    SlipwayError,
    format_rpc_error,
    state_name,
)
from slipway.credentials import find_api_key
from slipway.packaging import PackageError, read_model_name
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
    to_json,
)
from slipway.v1 import resources_pb2 as res

EXAMPLE_PAYLOAD = '{"text": "hi"}'

CLIENT_ERRORS = (grpc.RpcError, SlipwayError, PackageError)


# What a failed connection's details mean for the CLI's TLS options: (text in the details,
# whether the CLI used a CA, the advice).
TLS_HINTS = (
    (
        "CERTIFICATE_VERIFY_FAILED",
        True,
        "the server's certificate is not signed by the CA in --tls-ca / SLIPWAY_TLS_CA",
    ),
    (
        "WRONG_VERSION_NUMBER",
        True,
        "the server does not serve TLS: drop --tls-ca, or start it with --tls-cert and --tls-key",
    ),
    ("not in peer certificate", True, "the server's certificate does not name the host in the address called"),
    ("Socket closed", False, "if the server serves TLS, pass its CA certificate with --tls-ca / SLIPWAY_TLS_CA"),
)


def error_line(err: Exception, with_ca: bool = False) -> str:
    if not isinstance(err, grpc.RpcError):
        return str(err)
    line = format_rpc_error(err)
    if hasattr(err, "code") and err.code() is grpc.StatusCode.UNAVAILABLE:
        hint = next((advice for text, ca, advice in TLS_HINTS if ca == with_ca and text in line), None)
        if hint:
            return f"{line}. Hint: {hint}"
    return line


output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for humans, json for scripts.",
)
timeout_option = click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait.")


def root_api_key() -> str:
    """The key the root options name (--api-key, SLIPWAY_API_KEY, or <--data-dir>/admin.key)."""
    params = click.get_current_context().find_root().params
    return find_api_key(params.get("api_key"), params.get("data_dir"))


def connect() -> SlipwayClient:
    """A client to the controller named on the command line, closed with the command."""
    ctx = click.get_current_context()
    root = ctx.find_root().params
    return ctx.with_resource(SlipwayClient(root["controller"], ca_file=root["tls_ca"], api_key=root_api_key()))


def emit(output: str, value: Message | Sequence[Message], render: Callable[[Any], str]) -> None:
    click.echo(to_json(value) if output == "json" else render(value))


def resolve_model_id(client: SlipwayClient, ref: str) -> str:
    """A model name or ID → the model's ID; an unknown ref is passed through as is
    (a deleted model is still found by ID in usage records)."""
    if not ref:
        return ""
    try:
        return client.get_model(ref).id
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return ref
        raise


DEPLOYMENT_ALIASES = ("development", "production")


def deployment_options(command: Callable) -> Callable:
    """The DEPLOYMENT argument of a deployment command, and --model to name it within a model."""
    command = click.argument("deployment", metavar="DEPLOYMENT")(command)
    return click.option(
        "--model",
        default="",
        help="The model (ID or name) DEPLOYMENT belongs to; then DEPLOYMENT may be its name, "
        "'development' or 'production' instead of its ID.",
    )(command)


def resolve_deployment_id(client: SlipwayClient, model_ref: str, deployment_ref: str) -> str:
    """A deployment ID from DEPLOYMENT and --model; without a model, DEPLOYMENT is the ID.
    Within a model, 'development' and 'production' name its current ones (before any
    deployment that a user named so), then a deployment's name or ID."""
    if not model_ref:
        return deployment_ref
    model = client.get_model(model_ref)
    if deployment_ref in DEPLOYMENT_ALIASES:
        found = getattr(model, f"{deployment_ref}_deployment_id")
        if not found:
            raise SlipwayError(f"model {model.name} ({model.id}) has no {deployment_ref} deployment")
        return found
    for deployment in client.iter_deployments(model.id):
        if deployment_ref in (deployment.name, deployment.id):
            return deployment.id
    raise SlipwayError(f"model {model.name} ({model.id}) has no deployment named {deployment_ref!r}")


def confirm(yes_flag: bool, question: str) -> None:
    if not yes_flag:
        click.confirm(question, abort=True)


def progress_printer() -> Callable[[res.Deployment], None]:
    """Prints one line (to stderr) each time the deployment's state changes."""
    start = time.monotonic()
    last_state: list[int] = []

    def show(d: res.Deployment) -> None:
        if last_state and last_state[-1] == d.state:
            return
        last_state.append(d.state)
        note = f"  {d.status_message}" if d.status_message else ""
        click.echo(
            f"  [{time.monotonic() - start:6.1f}s] {state_name(d.state):<15} "
            f"{d.ready_replicas}/{d.desired_replicas} ready{note}",
            err=True,
        )

    return show


def wait_for_promotion(client: SlipwayClient, deployment: res.Deployment, timeout: float) -> res.Model:
    """Wait until `deployment` serves (the controller switches production as it does, even
    when it scales to zero at once) and then is its model's production deployment."""
    deadline = time.monotonic() + timeout
    try:
        client.wait_until_serving(deployment.id, timeout, on_update=progress_printer())
        return client.wait_until_production(deployment.model_id, deployment.id, max(0.0, deadline - time.monotonic()))
    except DeploymentFailed as err:
        raise SlipwayError(f"promotion failed, production is unchanged: {err}") from None


def predict_hint(model: res.Model, deployment: res.Deployment) -> str:
    alias = (
        ""
        if deployment.is_production
        else (
            " --deployment development"
            if deployment.kind == res.DEPLOYMENT_KIND_DEVELOPMENT
            else f" --deployment {deployment.id}"
        )
    )
    return f"Call it:  slipway predict {shlex.quote(model.name or model.id)}{alias} {shlex.quote(EXAMPLE_PAYLOAD)}"


def push_package(
    client: SlipwayClient,
    directory: Path,
    target: str,
    deployment_name: str = "",
    request_id: str = "",
    wait: bool = True,
    timeout: float = 300.0,
    output: str = "table",
    model_name: str = "",
    metadata: dict | None = None,
) -> None:
    """Push, print the IDs, and with `wait` follow the deployment until it serves."""
    say = functools.partial(click.echo, err=output == "json")  # keep stdout for the JSON
    click.echo(f"Pushing {model_name or read_model_name(directory) or directory} as {target} ...", err=True)
    pushed = client.push(directory, target, deployment_name, request_id, model_name, metadata)
    model, deployment = pushed.model, pushed.deployment
    say(f"Model {model.name} ({model.id}){' (created)' if pushed.model_created else ''}")
    say(f"Deployment {deployment.name} ({deployment.id})")
    for warning in pushed.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if wait:
        if target == "production":
            model = wait_for_promotion(client, deployment, timeout)
            deployment = client.get_deployment(deployment.id)
            say(f"Deployment {deployment.name} is now production.")
        else:
            deployment = client.wait_until_serving(deployment.id, timeout, on_update=progress_printer())
            asleep = deployment.state == res.DEPLOYMENT_STATE_SCALED_TO_ZERO
            say(
                f"Deployment {deployment.name} is {state_name(deployment.state)}{': the next request wakes it' if asleep else ''}."
            )
        say(predict_hint(model, deployment))
        pushed.model.CopyFrom(model)
        pushed.deployment.CopyFrom(deployment)
    if output == "json":
        click.echo(to_json(pushed))


# --- commands ------------------------------------------------------------------------------


@click.command()
@click.argument("directory", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--publish", is_flag=True, help="Create a new published deployment.")
@click.option("--promote", is_flag=True, help="Create a published deployment and make it production once active.")
@click.option("--deployment-name", default="", help="Name of the published deployment (default deployment-N).")
@click.option("--model-name", default="", help="The model to push to (default: config.yaml's model_name).")
@click.option(
    "--environment",
    default="",
    help="Push into this environment: only 'production' exists (the same as --promote).",
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
    if environment:
        if promote:
            raise click.UsageError("--promote and --environment are mutually exclusive")
        if environment != "production":
            raise click.UsageError(
                f"environment {environment!r} does not exist: the only environment is 'production' (--promote)"
            )
        promote = True
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
        client, directory, target, deployment_name, request_id, wait, timeout, output, model_name, _metadata(metadata)
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
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it is production.")
@timeout_option
@output_option
def deployments_promote(model: str, deployment: str, wait: bool, timeout: float, output: str) -> None:
    """Make a deployment production. Promoting development creates a new published deployment."""
    client = connect()
    promoted = client.promote_deployment(resolve_deployment_id(client, model, deployment))
    if not promoted.completed and wait:
        wait_for_promotion(client, promoted.deployment, timeout)
        promoted.deployment.CopyFrom(client.get_deployment(promoted.deployment.id))
        promoted.completed = True

    def render(p: Any) -> str:
        d = p.deployment
        if p.completed:
            return f"Deployment {d.name} ({d.id}) is production."
        return f"Deployment {d.name} ({d.id}) becomes production once active (now {state_name(d.state)})."

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
@click.option("--stream", is_flag=True, help="Print the chunks of a streaming model as they come.")
@timeout_option
def predict(target: str, payload: str | None, deployment_id: str, stream: bool, timeout: float) -> None:
    """Call a model (its production deployment) or a deployment through the gateway.

    JSON defaults to standard input.
    """
    if payload is None:
        payload = sys.stdin.read()
    try:
        json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="JSON") from None
    root = click.get_current_context().find_root().params
    client = InferenceClient(root["gateway"], ca_file=root["tls_ca"], api_key=root_api_key())
    try:
        if not stream:
            click.echo(client.predict(target, payload, deployment_id, timeout).decode("utf-8", "replace"))
            return
        sys.stdout.flush()
        out = sys.stdout.buffer
        chunk = b"\n"
        for chunk in client.predict_stream(target, payload, deployment_id, timeout):
            out.write(chunk)
            out.flush()
        if not chunk.endswith(b"\n"):
            out.write(b"\n")
    finally:
        client.close()
