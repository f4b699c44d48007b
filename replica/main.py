"""Command line: python -m replica --package DIR --state-file PATH [options].

Contract with the process that spawns a replica:
- Right after binding, before the model loads, PATH holds
  {"pid", "port", "http_port", "replica_id", "phase": "loading"} ("http_port": the HTTP
  predict route of replica/direct.py); then "ready" once the model
  is loaded (and health is SERVING), or "failed" with "error" ("<Type>: <message>")
  and "traceback", after which the process exits with code 3. A malformed package or
  a port that cannot be bound is also "failed" (with "port": null) and code 3.
- SIGTERM/SIGINT drain: health NOT_SERVING, new predicts UNAVAILABLE, in-flight
  ones get up to --drain-seconds, then exit 0.
- A model whose is_healthy() fails (False, raises, or hangs) turns PATH to
  "unhealthy" with "error", is drained the same way, then the process exits with code 4.
- Logs: one JSON object per line on stderr (descriptor 2): the server's events, and the
  model's stdout, stderr and logging, captured (replica/capture.py) within
  --log-line-bytes per line and --log-rate-bytes per second.
- Credential: read from --token-fd (a pipe, closed once read), else from the
  environment variable SLIPWAY_REPLICA_TOKEN (removed from the environment before any
  model code runs); every ReplicaService call must carry it in its
  x-slipway-replica-token metadata. Without one the replica does not start. Health
  checks need nothing.
- Listens on loopback by default; an unspecified address (0.0.0.0, ::) is refused.
- Reload only with --development, and only of packages under --packages-root.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ipaddress
import os
import pathlib
import sys

from replica import capture
from replica.direct import DEFAULT_REQUEST_TIMEOUT_SECONDS
from replica.log import Logger
from replica.server import Options, Replica
from slipway import tracing
from slipway.internal_auth import MAX_TOKEN_FILE_BYTES, REPLICA_TOKEN_ENV
from slipway.limits import DEFAULT_MAX_REQUEST_BYTES, LARGEST_MAX_REQUEST_BYTES


def _listens_everywhere(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host in ("", "*")


def _read_token(fd: int) -> str:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read(MAX_TOKEN_FILE_BYTES).decode(errors="replace").strip()


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m replica", description="Serve one model package over gRPC.")
    parser.add_argument("--package", required=True, type=pathlib.Path, help="model package directory (Truss layout)")
    parser.add_argument(
        "--state-file", required=True, type=pathlib.Path, help="JSON file reporting pid, port and phase"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--http-port", type=int, default=0, help="the HTTP predict route's port (POST /predict; 0 picks a free port)"
    )
    parser.add_argument(
        "--request-timeout-seconds",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_SECONDS,
        help="longest a call on the direct routes (HTTP /predict, InferenceService) runs",
    )
    parser.add_argument("--replica-id", default=None)
    parser.add_argument(
        "--drain-seconds", type=float, default=30.0, help="longest wait for in-flight calls on shutdown"
    )
    parser.add_argument(
        "--late-arrival-seconds",
        type=float,
        default=0.25,
        help="on shutdown, keep serving new calls this long (gateways may have dispatched them just before)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="largest request body and model answer (a response, or one chunk of a stream)",
    )
    parser.add_argument(
        "--health-check-seconds",
        type=float,
        default=10.0,
        help="how often a model's is_healthy() is asked (the first failure ends the replica with code 4)",
    )
    parser.add_argument(
        "--token-fd", type=int, default=None, help="inherited descriptor to read the replica's token from"
    )
    parser.add_argument(
        "--development", action="store_true", help="accept Reload (live reload of a development deployment)"
    )
    parser.add_argument(
        "--packages-root",
        type=pathlib.Path,
        default=None,
        help="the controller's stored packages: the only place Reload loads from (by digest)",
    )
    parser.add_argument(
        "--log-line-bytes",
        type=int,
        default=capture.DEFAULT_MAX_LINE_BYTES,
        help="longest log line kept whole (longer ones are cut)",
    )
    parser.add_argument(
        "--log-rate-bytes",
        type=int,
        default=capture.DEFAULT_RATE_BYTES,
        help="log bytes per second kept, after a burst of 8 times as much (beyond: dropped and counted)",
    )
    parser.add_argument("--otlp-endpoint", default=None, help="export traces over OTLP/gRPC (http[s]://HOST:PORT)")
    parser.add_argument(
        "--deployment-id",
        default="",
        help="the deployment this replica serves (direct calls naming another are refused)",
    )
    parser.add_argument("--model-id", default="", help="the model this replica serves (its ID)")
    parser.add_argument("--model-name", default="", help="the model this replica serves (its name)")
    args = parser.parse_args(argv)
    if not 256 <= args.log_line_bytes <= 1024 * 1024:
        parser.error("--log-line-bytes must be between 256 and 1048576")
    if not 1024 <= args.log_rate_bytes <= 1024**3:
        parser.error("--log-rate-bytes must be between 1024 and 1073741824")
    if args.otlp_endpoint:
        try:
            tracing.check_endpoint(args.otlp_endpoint)
        except tracing.TracingError as exc:
            parser.error(str(exc))
    if not 1 <= args.max_request_bytes <= LARGEST_MAX_REQUEST_BYTES:
        parser.error(f"--max-request-bytes must be between 1 and {LARGEST_MAX_REQUEST_BYTES}")
    if not 0 <= args.http_port <= 65535:
        parser.error("--http-port must be between 0 and 65535")
    if not 0 < args.request_timeout_seconds <= 86400:
        parser.error("--request-timeout-seconds must be in (0, 86400]")
    if not 0 < args.health_check_seconds <= 3600:
        parser.error("--health-check-seconds must be in (0, 3600]")
    if _listens_everywhere(args.host):
        parser.error(f"--host {args.host!r} listens on every interface; a replica takes loopback or one address")
    if args.development and args.packages_root is None:
        parser.error("--development needs --packages-root (Reload loads only stored packages)")
    # Out of the environment before any model code runs (or any process it starts inherits it).
    token = os.environ.pop(REPLICA_TOKEN_ENV, "")
    if args.token_fd is not None:
        token = _read_token(args.token_fd)
    if not token:
        parser.error(f"the replica's token is missing (--token-fd, or environment variable {REPLICA_TOKEN_ENV})")
    return Options(
        package=args.package,
        state_file=args.state_file,
        host=args.host,
        port=args.port,
        replica_id=args.replica_id,
        drain_seconds=args.drain_seconds,
        late_arrival_seconds=args.late_arrival_seconds,
        max_request_bytes=args.max_request_bytes,
        token=token,
        development=args.development,
        packages_root=args.packages_root.resolve() if args.packages_root else None,
        health_check_seconds=args.health_check_seconds,
        log_line_bytes=args.log_line_bytes,
        log_rate_bytes=args.log_rate_bytes,
        otlp_endpoint=args.otlp_endpoint,
        deployment_id=args.deployment_id,
        model_id=args.model_id,
        model_name=args.model_name,
        http_port=args.http_port,
        request_timeout_seconds=args.request_timeout_seconds,
    )


PR_SET_DUMPABLE = 4


def _not_dumpable() -> None:
    """Another process of the same user can then neither read this one's /proc/PID/environ
    and memory nor trace it (the model's secrets live there)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    _not_dumpable()
    sink = capture.LogSink(2, options.log_line_bytes, options.log_rate_bytes, burst_bytes=8 * options.log_rate_bytes)
    stdout, stderr = capture.install(sink)
    log = Logger(options.replica_id, sink=sink)
    replica = Replica(options, log)
    try:
        code = asyncio.run(replica.run())
        tracing.shutdown()  # exports the spans still buffered
    finally:
        for stream in (stdout, stderr):
            stream.close_partial()
        sink.flush_dropped()
    if replica.threads is not None:
        if replica.threads.busy:
            # Model code still running in a thread (a stuck load or predict) would keep
            # the interpreter from exiting: leave without waiting for it.
            log.warning("exiting_with_model_code_running", threads=replica.threads.busy)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        replica.threads.shutdown()
    return code
