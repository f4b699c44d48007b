"""The `slipway` command line: run the platform, push packages, manage deployments.

This module holds the root group and the commands that run the platform's servers
(`controller`, `gateway`, `up`); their flags and settings are in slipway/server_options.py,
the client commands in slipway/push_commands.py (push, watch, init) and
slipway/client_commands.py (models, deployments, predict, usage, events), keys, secrets,
logs and top in their own modules, what they share in slipway/command_support.py, their
rendering in slipway/render.py.

Read commands print aligned tables for humans and `--output json` for scripts. The
controller address comes from `--controller` or SLIPWAY_CONTROLLER. A refused call
prints one line ("Error: CODE (REASON): message") to stderr and exits with 1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from slipway import (
    client_commands,
    environment_commands,
    key_commands,
    log_commands,
    push_commands,
    request_commands,
    rollout_commands,
    secret_commands,
    top_command,
)
from slipway.addresses import checked_addresses
from slipway.client import DEFAULT_CONTROLLER, DEFAULT_GATEWAY, SlipwayClient
from slipway.command_support import CLIENT_ERRORS, EXAMPLE_PAYLOAD, error_line, push_package, timeout_option
from slipway.credentials import ADMIN_KEY_FILE, find_api_key
from slipway.dashboard_link import dashboard_link
from slipway.packaging import read_model_name
from slipway.server_options import (
    configure_logs,
    controller_settings,
    flag,
    gateway_options,
    gateway_settings,
    gateway_workers_option,
    host_option,
    insecure_no_auth_option,
    log_level_option,
    max_request_bytes_option,
    otlp_endpoint_option,
    run_until_stopped,
    server_options,
)
from slipway.tls import dialable_host
from slipway.tls_options import checked_ca, server_tls, tls_options


class SlipwayGroup(click.Group):
    """Turns every client-side failure into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CLIENT_ERRORS as err:
            raise click.ClickException(error_line(err, with_ca=ctx.params.get("tls_ca") is not None)) from None


# --- commands ------------------------------------------------------------------------------


@click.group(cls=SlipwayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--controller",
    envvar="SLIPWAY_CONTROLLER",
    default=DEFAULT_CONTROLLER,
    show_default=True,
    show_envvar=True,
    metavar="HOST:PORT[,HOST:PORT...]",
    callback=lambda ctx, param, value: checked_addresses(value),
    help="Address of the controller's gRPC API; several (comma-separated) are tried in order, "
    "the next taking over when one is unreachable.",
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
@click.option(
    "--api-key",
    envvar="SLIPWAY_API_KEY",
    show_envvar=True,
    help="API key to send (default: the admin key a local controller wrote in <data dir>/admin.key).",
)
@click.option(
    "--data-dir",
    envvar="SLIPWAY_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    show_envvar=True,
    help="Where a local controller keeps its state; clients read its admin.key "
    "(default: the nearest .slipway in this directory or a parent).",
)
@click.option(
    "--tls-ca",
    envvar="SLIPWAY_TLS_CA",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    callback=lambda ctx, param, value: checked_ca(value),
    show_envvar=True,
    metavar="PEM",
    help="CA certificate that verifies the controller and gateway when they serve TLS (a gateway verifies its controller with it).",
)
def cli(controller: str, gateway: str, api_key: str | None, data_dir: Path | None, tls_ca: Path | None) -> None:
    """Slipway: deploy model packages, promote them to production, scale them."""


@cli.command()
@server_options
@max_request_bytes_option
@tls_options
def controller(
    host: str,
    port: int,
    controller_http_port: int,
    data_dir: Path,
    database: str | None,
    log_level: str,
    autoscaling_time_scale: float,
    wake_hold_seconds: float,
    fork_replicas: bool,
    drain_seconds: float,
    insecure_no_auth: bool,
    health_check_seconds: float,
    otlp_endpoint: str | None,
    runtime: str,
    ray_address: str | None,
    max_request_bytes: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    replica_user: str,
    replica_uid_range: tuple[int, int],
    replica_python: str | None,
    **log_flags: Any,  # --log-retention-bytes etc.: read by controller_settings from the params
) -> None:
    """Run the controller until SIGTERM / Ctrl-C."""
    from controller.server import run_controller

    tls = server_tls(tls_cert, tls_key)
    configure_logs(log_level)
    settings = controller_settings(click.get_current_context().params, tls)
    run_until_stopped(run_controller(settings))


@cli.command()
@host_option
@gateway_options
@log_level_option
@max_request_bytes_option
@flag(
    "--internal-token-file",
    envvar="SLIPWAY_INTERNAL_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(".slipway") / "internal.token",
    help="The controller's internal token (it writes <data-dir>/internal.token): the gateway's credential.",
)
@insecure_no_auth_option
@otlp_endpoint_option
@gateway_workers_option("--workers")
@tls_options
@click.pass_context
def gateway(
    ctx: click.Context,
    host: str,
    gateway_port: int,
    http_port: int,
    replica_wait: float,
    max_http_connections: int,
    max_buffered_request_bytes: int,
    data_plane: str,
    no_metrics: bool,
    log_level: str,
    max_request_bytes: int,
    insecure_no_auth: bool,
    otlp_endpoint: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    internal_token_file: Path,
    workers: int,
) -> None:
    """Run a gateway (gRPC and HTTP) that follows the controller's routes (verified with --tls-ca).

    With --workers N, N gateway processes share both ports (SO_REUSEPORT) under a parent
    that restarts a worker that dies."""
    from gateway.native.setup import NativeUnavailable
    from gateway.server import run_gateway
    from gateway.workers import WorkerStartError, run_gateway_workers
    from slipway.internal_auth import TokenFileError

    tls = server_tls(tls_cert, tls_key)
    configure_logs(log_level)
    root = ctx.find_root().params
    settings = gateway_settings(ctx.params, tls, controller=root["controller"], controller_ca_file=root["tls_ca"])
    settings.internal_token_file = internal_token_file
    try:
        run_until_stopped(run_gateway_workers(settings, workers, log_level) if workers > 1 else run_gateway(settings))
    except TokenFileError as error:
        raise click.ClickException(f"{error} (set --internal-token-file)") from None
    except (WorkerStartError, NativeUnavailable) as error:
        raise click.ClickException(str(error)) from None


def push_example(client: SlipwayClient, example: Path, timeout: float, with_ca: bool) -> str:
    """Runs in a worker thread; returns an error line, or "" on success."""
    try:
        push_package(client, example, "development", timeout=timeout)
    except CLIENT_ERRORS as err:
        return error_line(err, with_ca)
    return ""


async def run_platform(
    controller_config: Any,
    gateway_config: Any,
    example: Path | None,
    timeout: float,
    workers: int = 1,
    log_level: str = "INFO",
) -> None:
    from controller.server import Controller
    from gateway.server import Gateway
    from slipway.process import wait_for_termination_signal

    controller_process = await Controller.start(controller_config)
    controller_address = f"{dialable_host(controller_config.host)}:{controller_process.port}"
    gateway_config.controller_address = controller_address
    gateway_config.internal_token = controller_process.internal_token
    gateway_process: Any
    if workers > 1:
        from gateway.workers import WorkerSupervisor

        gateway_process = WorkerSupervisor(gateway_config, workers, log_level)
        await gateway_process.start()
    else:
        gateway_process = await Gateway.start(gateway_config)
    ca_file = gateway_config.controller_ca_file
    gateway_host = dialable_host(gateway_config.host)
    http = f"{'https' if ca_file else 'http'}://{gateway_host}:{gateway_process.http_port}"
    curl = f"curl --cacert {ca_file}" if ca_file else "curl"
    try:
        click.echo(
            f"Slipway controller listening on {controller_process.address} (state in {controller_config.data_dir})"
        )
        click.echo(
            f"Slipway gateway listening on {gateway_config.host}:{gateway_process.grpc_port} (gRPC) and {http} (HTTP)"
        )
        click.echo(f"Slipway management API as JSON over HTTP (Connect) on {controller_process.http_url}")
        controller_config.dashboard.gateway_http_url = http
        click.echo(f"  export SLIPWAY_CONTROLLER={controller_address}")
        click.echo(f"  export SLIPWAY_GATEWAY={gateway_host}:{gateway_process.grpc_port}")
        if ca_file:
            click.echo(f"  export SLIPWAY_TLS_CA={ca_file}")
        key_file = controller_config.data_dir / ADMIN_KEY_FILE
        authorization = ""
        click.echo(f"Dashboard: {dashboard_link(controller_process.http_url, controller_config)}")
        if controller_config.keys.require_api_keys:
            click.echo(f"  export SLIPWAY_DATA_DIR={controller_config.data_dir.resolve()}   # the CLI's key: admin.key")
            authorization = f' -H "Authorization: Api-Key $(cat {key_file})"'
        else:
            click.echo(
                "WARNING: authentication is off (--insecure-no-auth): anyone who reaches these ports has full control"
            )
        if example is not None:
            client = SlipwayClient(
                controller_address, ca_file=ca_file, api_key=find_api_key(data_dir=controller_config.data_dir)
            )
            try:
                error = await asyncio.to_thread(push_example, client, example, timeout, ca_file is not None)
                if error:
                    click.echo(f"Error: pushing {example} failed: {error}", err=True)
                else:
                    model = await asyncio.to_thread(client.get_model, read_model_name(example))
                    click.echo(
                        f"Or over HTTP:  {curl} -X POST {http}/model/{model.id}/development/predict{authorization} "
                        f"-d '{EXAMPLE_PAYLOAD}'"
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
@gateway_workers_option("--gateway-workers")
@click.option(
    "--example",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A package directory to push as a development deployment once the platform is up.",
)
@max_request_bytes_option
@tls_options
@timeout_option
def up(
    host: str,
    port: int,
    controller_http_port: int,
    data_dir: Path,
    database: str | None,
    log_level: str,
    autoscaling_time_scale: float,
    wake_hold_seconds: float,
    fork_replicas: bool,
    drain_seconds: float,
    insecure_no_auth: bool,
    health_check_seconds: float,
    otlp_endpoint: str | None,
    runtime: str,
    ray_address: str | None,
    gateway_port: int,
    http_port: int,
    replica_wait: float,
    max_http_connections: int,
    max_buffered_request_bytes: int,
    no_metrics: bool,
    example: Path | None,
    max_request_bytes: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    timeout: float,
    gateway_workers: int,
    replica_user: str,
    replica_uid_range: tuple[int, int],
    replica_python: str | None,
    **log_flags: Any,  # --log-retention-bytes etc.: read by controller_settings from the params
) -> None:
    """Run the whole platform (controller and gateway) in the foreground until Ctrl-C / SIGTERM.

    With TLS, the gateway and the example's push verify the controller with --tls-ca, or
    with the certificate itself (a self-signed one) when no CA is given.
    """
    tls = server_tls(tls_cert, tls_key)
    context = click.get_current_context()
    flags = context.params
    own_ca = context.find_root().params["tls_ca"] or (tls.cert_file if tls else None)
    configure_logs(log_level)
    run_until_stopped(
        run_platform(
            controller_settings(flags, tls),
            gateway_settings(flags, tls, controller="", controller_ca_file=own_ca),
            example,
            timeout,
            gateway_workers,
            log_level,
        )
    )


for command in (
    push_commands.push,
    push_commands.watch,
    push_commands.init,
    client_commands.models,
    client_commands.deployments,
    client_commands.usage,
    client_commands.events,
    client_commands.predict,
    key_commands.keys,
    secret_commands.secrets,
    environment_commands.environments,
    request_commands.requests,
    rollout_commands.rollouts,
    top_command.top,
    log_commands.logs,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="slipway")


if __name__ == "__main__":
    main()
