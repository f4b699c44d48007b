"""`slipway logs DEPLOYMENT|--model M`: a model's logs, as lines or JSON, followed with --follow."""

from __future__ import annotations

import json
import time

import click
import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from slipway.command_support import connect
from slipway.key_commands import parse_duration
from slipway.v1 import log_service_pb2 as ls

LEVELS = {
    "debug": ls.LOG_LEVEL_DEBUG,
    "info": ls.LOG_LEVEL_INFO,
    "warning": ls.LOG_LEVEL_WARNING,
    "error": ls.LOG_LEVEL_ERROR,
    "critical": ls.LOG_LEVEL_CRITICAL,
}
MAX_LIMIT = 1000


def render(record: ls.LogRecord) -> str:
    """`2026-12-01T19:20:00.123Z WARNING r-abc req-… message` (empty fields left out)."""
    when = record.time.ToDatetime().isoformat(timespec="milliseconds") + "Z"
    level = ls.LogLevel.Name(record.level).removeprefix("LOG_LEVEL_")
    origin = record.replica_id or "build"
    parts = [when, f"{level:<8}", origin, record.request_id, record.message]
    return " ".join(part for part in parts if part)


def as_json(record: ls.LogRecord) -> str:
    return json.dumps(json_format.MessageToDict(record, preserving_proto_field_name=True), ensure_ascii=False)


@click.command()
@click.argument("deployment_id", required=False, default="")
@click.option("--model", "model", default="", help="All deployments of this model (ID or name).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they are written (Ctrl-C ends).")
@click.option("--request-id", default="", help="Only the lines of this request (its X-Slipway-Request-Id).")
@click.option("--since", default="", help="Only lines of the last 30s, 10m, 2h, 1d.")
@click.option("--level", type=click.Choice(list(LEVELS)), default=None, help="Only lines at this level or above.")
@click.option("--grep", "text", default="", help="Only lines containing this text (ASCII letters of either case).")
@click.option("--build", is_flag=True, help="The environment builds' logs instead of the replicas'.")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    default=100,
    show_default=True,
    help="Lines already written to show.",
)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def logs(
    deployment_id: str,
    model: str,
    follow: bool,
    request_id: str,
    since: str,
    level: str | None,
    text: str,
    build: bool,
    limit: int,
    output: str,
) -> None:
    """Print a deployment's (or a model's) log: the newest lines, oldest first.

    Lines are what the model wrote on stdout and stderr and through logging, stamped
    with the request being handled, and the model server's own events."""
    if bool(deployment_id) == bool(model):
        raise click.UsageError("name a DEPLOYMENT_ID or --model, not both")
    log_filter = ls.LogFilter(
        deployment_id=deployment_id,
        model_id=model,
        request_id=request_id,
        text=text,
        build=build,
        min_level=LEVELS[level] if level else ls.LOG_LEVEL_UNSPECIFIED,
    )
    if since:
        try:
            seconds = parse_duration(since)
        except click.BadParameter:
            raise click.BadParameter(
                f"{since!r} is not a duration such as 30s, 10m, 2h", param_hint="--since"
            ) from None
        start = Timestamp()
        start.FromNanoseconds(int((time.time() - seconds) * 1e9))
        log_filter.start_time.CopyFrom(start)
    client = connect()
    show = as_json if output == "json" else render
    if follow:
        call = client.logs.TailLogs(ls.TailLogsRequest(filter=log_filter, initial_count=limit))
        try:
            for message in call:
                click.echo(show(message.record))
        except KeyboardInterrupt:
            call.cancel()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise
        return
    records: list[ls.LogRecord] = []
    request = ls.ListLogsRequest(filter=log_filter, page_size=limit, order=ls.LOG_ORDER_NEWEST_FIRST)
    while len(records) < limit:
        page = client.logs.ListLogs(request, timeout=client.timeout)
        records.extend(page.records)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
        request.page_size = limit - len(records)
    for record in reversed(records[:limit]):
        click.echo(show(record))
