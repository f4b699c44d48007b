"""The `slipway` command line: run the platform, push packages, manage deployments.

Read commands print aligned tables for humans and `--output json` for scripts. The
controller address comes from `--controller` or SLIPWAY_CONTROLLER. A refused call
prints one line ("Error: CODE (REASON): message") to stderr and exits with 1.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from slipway.client import (
    DEFAULT_CONTROLLER,
    DEFAULT_GATEWAY,
    DeploymentFailed,
    InferenceClient,
    SlipwayClient,
    SlipwayError,
    format_rpc_error,
    state_name,
)
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES, LARGEST_MAX_REQUEST_BYTES
from slipway.packaging import PackageError, read_model_name
from slipway.v1 import resources_pb2 as res

EXAMPLE_PAYLOAD = '{"text": "hi"}'

# --- rendering ------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned on the widest cell, two spaces apart, no trailing blanks."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells)


def render_details(pairs: Sequence[tuple[str, object]]) -> str:
    """`Key:  value` lines for one resource; empty values are left out."""
    pairs = [(k, v) for k, v in pairs if v not in ("", None)]
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{k + ':':<{width}}  {v}" for k, v in pairs)


def to_dict(message: Message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_json(value: Message | Sequence[Message]) -> str:
    data = to_dict(value) if isinstance(value, Message) else [to_dict(m) for m in value]
    return json.dumps(data, indent=2)


def timestamp(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def kind_name(kind: int) -> str:
    return res.DeploymentKind.Name(kind).removeprefix("DEPLOYMENT_KIND_").lower()


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def autoscaling_line(s: res.AutoscalingSettings) -> str:
    return (
        f"min {s.min_replica}, max {s.max_replica}, window {s.autoscaling_window}s, "
        f"scale-down delay {s.scale_down_delay}s, concurrency target {s.concurrency_target}, "
        f"utilization {s.target_utilization_percentage}%"
    )


Columns = Sequence[tuple[str, Callable[[Any], object]]]

MODEL_COLUMNS: Columns = [
    ("ID", lambda m: m.id),
    ("NAME", lambda m: m.name),
    ("PRODUCTION", lambda m: m.production_deployment_id or "-"),
    ("DEVELOPMENT", lambda m: m.development_deployment_id or "-"),
    ("DEPLOYMENTS", lambda m: m.deployment_count),
    ("CREATED", lambda m: timestamp(m.create_time)),
]
DEPLOYMENT_COLUMNS: Columns = [
    ("ID", lambda d: d.id),
    ("MODEL", lambda d: d.model_id),
    ("NAME", lambda d: d.name),
    ("KIND", lambda d: kind_name(d.kind)),
    ("PROD", lambda d: "*" if d.is_production else ""),
    ("STATE", lambda d: "DELETED" if d.HasField("delete_time") else state_name(d.state)),
    ("ACTIVE", lambda d: yes(d.active)),
    ("REPLICAS", lambda d: f"{d.ready_replicas}/{d.desired_replicas}"),
    ("REV", lambda d: d.revision),
    ("CREATED", lambda d: timestamp(d.create_time)),
]
REPLICA_COLUMNS: Columns = [
    ("REPLICA", lambda r: r.id),
    ("STATE", lambda r: res.ReplicaState.Name(r.state).removeprefix("REPLICA_STATE_")),
    ("ADDRESS", lambda r: r.address or "-"),
    ("PID", lambda r: r.pid or "-"),
    ("REV", lambda r: r.revision),
    ("STARTED", lambda r: timestamp(r.start_time)),
]
USAGE_COLUMNS: Columns = [
    ("MODEL", lambda u: u.model_id),
    ("DEPLOYMENT", lambda u: u.deployment_id),
    ("NAME", lambda u: u.deployment_name),
    ("REPLICA-SECONDS", lambda u: f"{u.replica_seconds:.1f}"),
    ("STARTS", lambda u: u.replica_starts),
    ("DELETED", lambda u: yes(u.deployment_deleted)),
]
EVENT_COLUMNS: Columns = [
    ("SEQ", lambda e: e.sequence),
    ("TIME", lambda e: timestamp(e.create_time)),
    ("MODEL", lambda e: e.model_id),
    ("DEPLOYMENT", lambda e: e.deployment_id or "-"),
    ("TYPE", lambda e: e.type),
    ("MESSAGE", lambda e: e.message),
]


def table(columns: Columns, empty: str) -> Callable[[Sequence[Any]], str]:
    def render(items: Sequence[Any]) -> str:
        if not items:
            return empty
        return render_table([h for h, _ in columns], [[get(i) for _, get in columns] for i in items])

    return render


def model_details(m: res.Model) -> str:
    return render_details(
        [
            ("ID", m.id),
            ("Name", m.name),
            ("Production", m.production_deployment_id or "-"),
            ("Development", m.development_deployment_id or "-"),
            ("Promoting", m.promoting_deployment_id),
            ("Deployments", m.deployment_count),
            ("Created", timestamp(m.create_time)),
            ("Updated", timestamp(m.update_time)),
            ("Deleted", timestamp(m.delete_time)),
        ]
    )


def deployment_details(d: res.Deployment) -> str:
    text = render_details(
        [
            ("ID", d.id),
            ("Model", d.model_id),
            ("Name", d.name),
            ("Kind", kind_name(d.kind)),
            ("Production", yes(d.is_production)),
            ("Active", yes(d.active)),
            ("State", state_name(d.state)),
            ("Status", d.status_message),
            ("Replicas", f"{d.ready_replicas} ready / {d.desired_replicas} desired"),
            ("Autoscaling", autoscaling_line(d.autoscaling_settings)),
            ("Revision", d.revision),
            ("Package", d.package_digest),
            ("Source", d.source_deployment_id),
            ("Created", timestamp(d.create_time)),
            ("Updated", timestamp(d.update_time)),
            ("Deleted", timestamp(d.delete_time)),
        ]
    )
    if d.replicas:
        text += "\n\n" + table(REPLICA_COLUMNS, "")(list(d.replicas))
    return text


def autoscaling_details(d: res.Deployment) -> str:
    s = d.autoscaling_settings
    return f"Deployment {d.name} ({d.id})\n" + render_details(
        [(name, getattr(s, name)) for name in res.AutoscalingSettings.DESCRIPTOR.fields_by_name]
    )


def deployment_line(d: res.Deployment) -> str:
    return f"Deployment {d.name} ({d.id}): {state_name(d.state)}, active: {yes(d.active)}"


# --- shared command plumbing -------------------------------------------------------------


CLIENT_ERRORS = (grpc.RpcError, SlipwayError, PackageError)


def error_line(err: Exception) -> str:
    return format_rpc_error(err) if isinstance(err, grpc.RpcError) else str(err)


class SlipwayGroup(click.Group):
    """Turns every client-side failure into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CLIENT_ERRORS as err:
            raise click.ClickException(error_line(err)) from None


output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for humans, json for scripts.",
)
timeout_option = click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait.")
max_request_bytes_option = click.option(
    "--max-request-bytes",
    envvar="SLIPWAY_MAX_REQUEST_BYTES",
    type=click.IntRange(min=1, max=LARGEST_MAX_REQUEST_BYTES),
    default=DEFAULT_MAX_REQUEST_BYTES,
    show_default=True,
    show_envvar=True,
    help="Largest request body and model answer (a response, or one stream chunk) in bytes, in gateway and replicas.",
)


def connect() -> SlipwayClient:
    """A client to the controller named on the command line, closed with the command."""
    ctx = click.get_current_context()
    return ctx.with_resource(SlipwayClient(ctx.find_root().params["controller"]))


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
    """Wait until `deployment` is active and then its model's production deployment."""
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
    return f"Call it:  slipway predict {model.name or model.id}{alias} '{EXAMPLE_PAYLOAD}'"


def push_package(
    client: SlipwayClient,
    directory: Path,
    target: str,
    deployment_name: str = "",
    request_id: str = "",
    wait: bool = True,
    timeout: float = 300.0,
    output: str = "table",
) -> None:
    """Push, print the IDs, and with `wait` follow the deployment until it serves."""
    say = functools.partial(click.echo, err=output == "json")  # keep stdout for the JSON
    click.echo(f"Pushing {read_model_name(directory) or directory} as {target} ...", err=True)
    pushed = client.push(directory, target, deployment_name, request_id)
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
            say(f"Deployment {deployment.name} is {state_name(deployment.state)}.")
        say(predict_hint(model, deployment))
        pushed.model.CopyFrom(model)
        pushed.deployment.CopyFrom(deployment)
    if output == "json":
        click.echo(to_json(pushed))


# --- commands ------------------------------------------------------------------------------


@click.group(cls=SlipwayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--controller",
    envvar="SLIPWAY_CONTROLLER",
    default=DEFAULT_CONTROLLER,
    show_default=True,
    show_envvar=True,
    metavar="HOST:PORT",
    help="Address of the controller's gRPC API.",
)
@click.option(
    "--gateway",
    envvar="SLIPWAY_GATEWAY",
    default=DEFAULT_GATEWAY,
    show_default=True,
    show_envvar=True,
    metavar="HOST:PORT",
    help="Address of a gateway's gRPC API (for predict).",
)
def cli(controller: str, gateway: str) -> None:
    """Slipway: deploy model packages, promote them to production, scale them."""


def server_options(command: Callable) -> Callable:
    options = [
        click.option("--host", envvar="SLIPWAY_HOST", default="127.0.0.1", show_default=True, show_envvar=True),
        click.option(
            "--port", envvar="SLIPWAY_CONTROLLER_PORT", type=int, default=7100, show_default=True, show_envvar=True
        ),
        click.option(
            "--data-dir",
            envvar="SLIPWAY_DATA_DIR",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path(".slipway"),
            show_default=True,
            show_envvar=True,
        ),
        click.option(
            "--log-level",
            envvar="SLIPWAY_LOG_LEVEL",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
            default="INFO",
            show_default=True,
            show_envvar=True,
        ),
        click.option(
            "--autoscaling-time-scale",
            envvar="SLIPWAY_AUTOSCALING_TIME_SCALE",
            type=click.FloatRange(min=0.0001),
            default=1.0,
            show_default=True,
            show_envvar=True,
            help="Multiplies every autoscaling duration (window, scale-down delay); below 1 for demos and tests.",
        ),
        click.option(
            "--wake-hold-seconds",
            envvar="SLIPWAY_WAKE_HOLD_SECONDS",
            type=click.FloatRange(min=0),
            default=10.0,
            show_default=True,
            show_envvar=True,
            help="How long a woken deployment keeps at least one replica.",
        ),
        click.option(
            "--fork-replicas/--no-fork-replicas",
            envvar="SLIPWAY_FORK_REPLICAS",
            default=True,
            show_default=True,
            show_envvar=True,
            help="Fork replicas from a pre-imported model server (fast cold starts) instead of new interpreters.",
        ),
        click.option(
            "--drain-seconds",
            envvar="SLIPWAY_DRAIN_SECONDS",
            type=click.FloatRange(min=0),
            default=30.0,
            show_default=True,
            show_envvar=True,
            help="How long a published replica being stopped may finish its requests in flight (raise it for long requests).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def configure_logs(log_level: str) -> None:
    from slipway.logs import configure

    configure(log_level.upper())


def controller_settings(
    host: str,
    port: int,
    data_dir: Path,
    time_scale: float,
    wake_hold: float,
    fork_replicas: bool,
    drain_seconds: float,
    max_request_bytes: int,
) -> Any:
    from controller.autoscaler import AutoscalerConfig
    from controller.server import ControllerSettings

    return ControllerSettings(
        data_dir=data_dir,
        host=host,
        port=port,
        autoscaler=AutoscalerConfig(time_scale=time_scale, wake_hold_seconds=wake_hold),
        fork_replicas=fork_replicas,
        drain_seconds=drain_seconds,
        max_request_bytes=max_request_bytes,
    )


def gateway_settings(
    host: str, grpc_port: int, http_port: int, controller: str, replica_wait: float, max_request_bytes: int
) -> Any:
    from gateway.server import GatewaySettings

    return GatewaySettings(
        controller_address=controller,
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        replica_wait_seconds=replica_wait,
        max_request_bytes=max_request_bytes,
    )


def gateway_options(command: Callable) -> Callable:
    options = [
        click.option(
            "--gateway-port",
            envvar="SLIPWAY_GATEWAY_PORT",
            type=int,
            default=7200,
            show_default=True,
            show_envvar=True,
            help="gRPC port of the gateway's InferenceService.",
        ),
        click.option(
            "--http-port",
            envvar="SLIPWAY_HTTP_PORT",
            type=int,
            default=7280,
            show_default=True,
            show_envvar=True,
            help="HTTP port of the gateway.",
        ),
        click.option(
            "--replica-wait",
            envvar="SLIPWAY_REPLICA_WAIT",
            type=float,
            default=60.0,
            show_default=True,
            show_envvar=True,
            help="Seconds a request waits for a ready replica before 503.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_until_stopped(coroutine: Any) -> None:
    try:
        asyncio.run(coroutine)
    except KeyboardInterrupt:
        click.echo("Stopped.", err=True)


@cli.command()
@server_options
@max_request_bytes_option
def controller(
    host: str,
    port: int,
    data_dir: Path,
    log_level: str,
    autoscaling_time_scale: float,
    wake_hold_seconds: float,
    fork_replicas: bool,
    drain_seconds: float,
    max_request_bytes: int,
) -> None:
    """Run the controller until SIGTERM / Ctrl-C."""
    from controller.server import run_controller

    configure_logs(log_level)
    settings = controller_settings(
        host, port, data_dir, autoscaling_time_scale, wake_hold_seconds, fork_replicas, drain_seconds, max_request_bytes
    )
    run_until_stopped(run_controller(settings))


@cli.command()
@click.option("--host", envvar="SLIPWAY_HOST", default="127.0.0.1", show_default=True, show_envvar=True)
@gateway_options
@click.option(
    "--log-level",
    envvar="SLIPWAY_LOG_LEVEL",
    default="INFO",
    show_default=True,
    show_envvar=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@max_request_bytes_option
@click.pass_context
def gateway(
    ctx: click.Context,
    host: str,
    gateway_port: int,
    http_port: int,
    replica_wait: float,
    log_level: str,
    max_request_bytes: int,
) -> None:
    """Run a gateway (gRPC and HTTP) that follows the controller's routes."""
    from gateway.server import run_gateway

    configure_logs(log_level)
    controller_address = ctx.find_root().params["controller"]
    settings = gateway_settings(host, gateway_port, http_port, controller_address, replica_wait, max_request_bytes)
    run_until_stopped(run_gateway(settings))


def push_example(client: SlipwayClient, example: Path, timeout: float) -> str:
    """Runs in a worker thread; returns an error line, or "" on success."""
    try:
        push_package(client, example, "development", timeout=timeout)
    except CLIENT_ERRORS as err:
        return error_line(err)
    return ""


async def run_platform(controller_config: Any, gateway_config: Any, example: Path | None, timeout: float) -> None:
    from controller.server import Controller
    from gateway.server import Gateway
    from slipway.process import wait_for_termination_signal

    controller_process = await Controller.start(controller_config)
    gateway_config.controller_address = controller_process.address
    gateway_process = await Gateway.start(gateway_config)
    http = f"http://{gateway_config.host}:{gateway_process.http_port}"
    try:
        click.echo(
            f"Slipway controller listening on {controller_process.address} (state in {controller_config.data_dir})"
        )
        click.echo(
            f"Slipway gateway listening on {gateway_config.host}:{gateway_process.grpc_port} (gRPC) and {http} (HTTP)"
        )
        click.echo(f"  export SLIPWAY_CONTROLLER={controller_process.address}")
        click.echo(f"  export SLIPWAY_GATEWAY={gateway_config.host}:{gateway_process.grpc_port}")
        if example is not None:
            client = SlipwayClient(controller_process.address)
            try:
                error = await asyncio.to_thread(push_example, client, example, timeout)
                if error:
                    click.echo(f"Error: pushing {example} failed: {error}", err=True)
                else:
                    model = await asyncio.to_thread(client.get_model, read_model_name(example))
                    click.echo(
                        f"Or over HTTP:  curl -X POST {http}/model/{model.id}/development/predict -d '{EXAMPLE_PAYLOAD}'"
                    )
            finally:
                client.close()
        click.echo("Serving; press Ctrl-C to stop.")
        await wait_for_termination_signal()
    finally:
        await gateway_process.stop()
        await controller_process.stop()


@cli.command()
@server_options
@gateway_options
@click.option(
    "--example",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A package directory to push as a development deployment once the platform is up.",
)
@max_request_bytes_option
@timeout_option
def up(
    host: str,
    port: int,
    data_dir: Path,
    log_level: str,
    autoscaling_time_scale: float,
    wake_hold_seconds: float,
    fork_replicas: bool,
    drain_seconds: float,
    gateway_port: int,
    http_port: int,
    replica_wait: float,
    example: Path | None,
    max_request_bytes: int,
    timeout: float,
) -> None:
    """Run the whole platform (controller and gateway) in the foreground until Ctrl-C / SIGTERM."""
    configure_logs(log_level)
    run_until_stopped(
        run_platform(
            controller_settings(
                host,
                port,
                data_dir,
                autoscaling_time_scale,
                wake_hold_seconds,
                fork_replicas,
                drain_seconds,
                max_request_bytes,
            ),
            gateway_settings(host, gateway_port, http_port, "", replica_wait, max_request_bytes),
            example,
            timeout,
        )
    )


@cli.command()
@click.argument("directory", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--publish", is_flag=True, help="Create a new published deployment.")
@click.option("--promote", is_flag=True, help="Create a published deployment and make it production once active.")
@click.option("--deployment-name", default="", help="Name of the published deployment (default deployment-N).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the deployment until it serves.")
@click.option("--request-id", default="", help="Idempotency key: a retried push with the same key is applied once.")
@click.option("--watch", "watch_changes", is_flag=True, help="Then live-reload every change (see `slipway watch`).")
@timeout_option
@output_option
def push(
    directory: Path,
    publish: bool,
    promote: bool,
    deployment_name: str,
    wait: bool,
    request_id: str,
    watch_changes: bool,
    timeout: float,
    output: str,
) -> None:
    """Push the model package in DIRECTORY (default: the current directory).

    Without options this creates or updates the model's development deployment.
    """
    if publish and promote:
        raise click.UsageError("--publish and --promote are mutually exclusive")
    if deployment_name and not (publish or promote):
        raise click.UsageError("--deployment-name needs --publish or --promote (development is always 'development')")
    if watch_changes and (publish or promote):
        raise click.UsageError("--watch live-reloads the development deployment: it excludes --publish and --promote")
    target = "production" if promote else "published" if publish else "development"
    client = connect()
    push_package(client, directory, target, deployment_name, request_id, wait, timeout, output)
    if watch_changes:
        from slipway.watch import watch_package

        watch_package(client, directory, timeout)


@cli.command()
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


@cli.command()
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


@cli.group()
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


@cli.group()
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
@click.argument("deployment_id")
@output_option
def deployments_get(deployment_id: str, output: str) -> None:
    """Show a deployment and its replicas."""
    emit(output, connect().get_deployment(deployment_id), deployment_details)


def deployment_action(name: str, method: str, help_text: str) -> None:
    """Registers `slipway deployments NAME ID` calling SlipwayClient.METHOD(ID)."""

    @deployments.command(name, help=help_text)
    @click.argument("deployment_id")
    @output_option
    def command(deployment_id: str, output: str) -> None:
        emit(output, getattr(connect(), method)(deployment_id), deployment_line)


deployment_action("activate", "activate_deployment", "Start a deactivated deployment again.")
deployment_action(
    "deactivate", "deactivate_deployment", "Stop its replicas; it stays listed, its endpoints answer 404."
)
deployment_action("wake", "wake_deployment", "Start a scaled-to-zero deployment ahead of traffic.")


@deployments.command("delete")
@click.argument("deployment_id")
@click.option("--yes", "-y", "yes_flag", is_flag=True, help="Do not ask for confirmation.")
@output_option
def deployments_delete(deployment_id: str, yes_flag: bool, output: str) -> None:
    """Delete a deployment (not production). This cannot be undone."""
    confirm(yes_flag, f"Delete deployment {deployment_id}? This cannot be undone.")
    emit(output, connect().delete_deployment(deployment_id), lambda d: f"Deleted deployment {d.name} ({d.id}).")


@deployments.command("rename")
@click.argument("deployment_id")
@click.argument("new_name")
@output_option
def deployments_rename(deployment_id: str, new_name: str, output: str) -> None:
    """Rename a published deployment."""
    emit(output, connect().rename_deployment(deployment_id, new_name), lambda d: f"Renamed {d.id} to {d.name}.")


@deployments.command("promote")
@click.argument("deployment_id")
@click.option("--wait/--no-wait", default=False, show_default=True, help="Wait until it is production.")
@timeout_option
@output_option
def deployments_promote(deployment_id: str, wait: bool, timeout: float, output: str) -> None:
    """Make a deployment production. Promoting development creates a new published deployment."""
    client = connect()
    promoted = client.promote_deployment(deployment_id)
    deployment = promoted.deployment
    if not promoted.completed and wait:
        wait_for_promotion(client, deployment, timeout)
        deployment = client.get_deployment(deployment.id)
        promoted.deployment.CopyFrom(deployment)
        promoted.completed = True

    def render(p: Any) -> str:
        d = p.deployment
        if p.completed:
            return f"Deployment {d.name} ({d.id}) is production."
        return f"Deployment {d.name} ({d.id}) becomes production once active (now {state_name(d.state)})."

    emit(output, promoted, render)


@deployments.command("autoscaling")
@click.argument("deployment_id")
@click.option("--min-replica", type=int)
@click.option("--max-replica", type=int)
@click.option("--autoscaling-window", type=int, help="Seconds.")
@click.option("--scale-down-delay", type=int, help="Seconds.")
@click.option("--concurrency-target", type=int)
@click.option("--target-utilization-percentage", type=int)
@output_option
def deployments_autoscaling(deployment_id: str, output: str, **settings: int | None) -> None:
    """Show the autoscaling settings, or change only the ones given."""
    client = connect()
    given: dict[str, Any] = {name: value for name, value in settings.items() if value is not None}
    if given:
        deployment = client.update_autoscaling(deployment_id, **given)
    else:
        deployment = client.get_deployment(deployment_id)
    emit(output, deployment.autoscaling_settings, lambda _: autoscaling_details(deployment))


@cli.command()
@click.option("--model", default="", help="Only this model's deployments (ID or name).")
@output_option
def usage(model: str, output: str) -> None:
    """Replica time per deployment (deleted deployments included)."""
    client = connect()
    emit(output, client.list_usage(resolve_model_id(client, model)), table(USAGE_COLUMNS, "No usage."))


@cli.command()
@click.option("--model", default="", help="Only this model's events (ID or name).")
@click.option("--deployment", "deployment_id", default="", help="Only this deployment's events.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the most recent N events.")
@output_option
def events(model: str, deployment_id: str, limit: int | None, output: str) -> None:
    """The lifecycle event log, oldest first."""
    client = connect()
    items = client.list_events(resolve_model_id(client, model), deployment_id, limit)
    emit(output, items, table(EVENT_COLUMNS, "No events."))


@cli.command()
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
    client = InferenceClient(click.get_current_context().find_root().params["gateway"])
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


def main() -> None:
    cli(prog_name="slipway")


if __name__ == "__main__":
    main()
