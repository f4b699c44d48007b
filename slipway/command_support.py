"""What the CLI's client commands share: connecting with the caller's key, resolving
model and deployment references, rendering answers, waiting for outcomes, and errors as one line.
"""

from __future__ import annotations

import functools
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf.message import Message

from slipway.client import (
    DeploymentFailed,
    SlipwayClient,
    SlipwayError,
    format_rpc_error,
    state_name,
)
from slipway.credentials import find_api_key
from slipway.packaging import PackageError, read_model_name
from slipway.render import (
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
    # A server that speaks no TLS but closes the connection rather than answering in plain text
    # (HAProxy on the native data plane): the handshake ends with no byte from the server.
    (
        "Handshake read failed (Socket closed)",
        True,
        "the server closed the connection during the TLS handshake: the server does not serve TLS"
        " (or drops this client): drop --tls-ca, or start it with --tls-cert and --tls-key",
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


def wait_for_promotion(
    client: SlipwayClient, deployment: res.Deployment, timeout: float, environment: str = "production"
) -> res.Model:
    """Wait until `deployment` serves (the controller switches the environment as it does, even
    when it scales to zero at once) and then is the deployment of `environment`."""
    deadline = time.monotonic() + timeout
    try:
        client.wait_until_serving(deployment.id, timeout, on_update=progress_printer())
        return client.wait_until_production(
            deployment.model_id, deployment.id, max(0.0, deadline - time.monotonic()), environment=environment
        )
    except DeploymentFailed as err:
        raise SlipwayError(f"promotion failed, {environment} is unchanged: {err}") from None


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
    environment: str = "",
) -> None:
    """Push, print the IDs, and with `wait` follow the deployment until it serves (and, promoted,
    until it is the deployment of `environment`, production by default)."""
    say = functools.partial(click.echo, err=output == "json")  # keep stdout for the JSON
    click.echo(f"Pushing {model_name or read_model_name(directory) or directory} as {target} ...", err=True)
    pushed = client.push(directory, target, deployment_name, request_id, model_name, metadata, environment)
    model, deployment = pushed.model, pushed.deployment
    say(f"Model {model.name} ({model.id}){' (created)' if pushed.model_created else ''}")
    say(f"Deployment {deployment.name} ({deployment.id})")
    for warning in pushed.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if wait:
        if target == "production":
            model = wait_for_promotion(client, deployment, timeout, environment or "production")
            deployment = client.get_deployment(deployment.id)
            say(f"Deployment {deployment.name} is now {environment or 'production'}.")
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
