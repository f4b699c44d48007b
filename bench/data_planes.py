"""bench/gateway.py's comparison of the data planes (slipway/data_plane.py): one gateway
process per plane following the same controller, streaming through each, cold starts from
zero through each, and the summary against issue 17's targets."""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import grpc
import yaml
from google.protobuf import field_mask_pb2

from bench.h2load import Run, Target, fmt, grpc_frame, say
from slipway import data_plane
from slipway.internal_auth import REPLICA_TOKEN_HEADER
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import replica_service_pb2 as rs
from slipway.v1 import resources_pb2 as r

REPO = pathlib.Path(__file__).resolve().parent.parent
INVOKE_STREAM = "/slipway.v1.ReplicaService/InvokeStream"
PREDICT_STREAM = "/slipway.v1.InferenceService/PredictStream"
GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
LABELS = {data_plane.PYTHON: "", data_plane.NATIVE: " (native)"}  # in the run names: "gateway (native), ..."

# Issue 17's targets for the native plane on this machine.
TARGET_THROUGHPUT = 0.85  # c=32 req/s, x direct to the replica
TARGET_ADDED_P50_MS = 0.2  # at c=1, over direct
TARGET_CPU_RATIO = 0.3  # the proxy's CPU per request, x the replica's
TARGET_COLD_P50_MS = 45.0  # today's cold start from zero (bench/cold_start.py), not to be slower


# --- the planes' gateways ---------------------------------------------------------------------


def haproxy_binary() -> str | None:
    """The HAProxy the native plane runs: $SLIPWAY_HAPROXY, else haproxy on PATH."""
    configured = os.environ.get("SLIPWAY_HAPROXY")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("haproxy")


def native_unavailable() -> str | None:
    """Why this tree cannot run the native plane, or None."""
    if not (REPO / "gateway" / "native").is_dir():
        return "this tree has no native data plane (gateway/native/)"
    if haproxy_binary() is None:
        return "no haproxy binary (set SLIPWAY_HAPROXY or put haproxy on PATH)"
    help_text = subprocess.run(
        [sys.executable, "-m", "slipway", "gateway", "--help"], cwd=REPO, capture_output=True, text=True
    ).stdout
    if "--data-plane" not in help_text:
        return "`slipway gateway` has no --data-plane option"
    return None


def plane_flags(plane: str) -> list[str]:
    """`slipway gateway` flags for a plane (none for python: every version's default)."""
    return [] if plane == data_plane.PYTHON else ["--data-plane", plane]


def descendants(parent: int) -> list[int]:
    found, frontier = [], [parent]
    while frontier:
        pid = frontier.pop()
        for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            frontier += children
    return found


def haproxy_pids(parent: int, timeout: float = 30.0) -> list[int]:
    """The haproxy processes a native gateway started (there must be some)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for pid in descendants(parent):
            try:
                if pathlib.Path(f"/proc/{pid}/comm").read_text().strip().startswith("haproxy"):
                    found.append(pid)
            except OSError:
                continue
        if found:
            return found
        time.sleep(0.1)
    raise RuntimeError(f"the native gateway (pid {parent}) runs no haproxy")


def routing_headers(model_id: str) -> list[str]:
    """h2load flags for the metadata the SDK sends beside a Predict's Target (by model ID,
    production), by which the native plane routes a gRPC call without reading it."""
    return [flag for name, value in routing_metadata(model_id) for flag in ("-H", f"{name}: {value}")]


def routing_metadata(model_id: str) -> tuple[tuple[str, str], ...]:
    return ((data_plane.MODEL_HEADER, model_id), (data_plane.ENVIRONMENT_HEADER, "production"))


# --- the deployments --------------------------------------------------------------------------


def copy_example(work: pathlib.Path, example: str, name: str, concurrency: int) -> pathlib.Path:
    package = work / name
    shutil.copytree(REPO / "examples" / example, package)
    config_file = package / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["model_name"] = name
    config.setdefault("runtime", {})["predict_concurrency"] = concurrency
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return package


def autoscale(controller: str, deployment_id: str, **settings: int) -> None:
    """UpdateDeployment of autoscaling settings (the controller runs at --autoscaling-time-scale)."""
    deployment = r.Deployment(id=deployment_id)
    for key, value in settings.items():
        setattr(deployment.autoscaling_settings, key, value)
    paths = [f"autoscaling_settings.{key}" for key in settings]
    with grpc.insecure_channel(controller) as channel:
        ds_grpc.DeploymentServiceStub(channel).UpdateDeployment(
            ds.UpdateDeploymentRequest(deployment=deployment, update_mask=field_mask_pb2.FieldMask(paths=paths)),
            timeout=30,
        )


def state(controller: str, deployment_id: str) -> r.Deployment:
    with grpc.insecure_channel(controller) as channel:
        stub = ds_grpc.DeploymentServiceStub(channel)
        return stub.GetDeployment(ds.GetDeploymentRequest(deployment_id=deployment_id), timeout=10).deployment


def poll(check, timeout: float = 60.0, interval: float = 0.005, what: str = "a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


# --- streaming --------------------------------------------------------------------------------


def stream_targets(
    work: pathlib.Path,
    replica_address: str,
    replica_token: str,
    gateways: dict[str, tuple[str, tuple[int, ...], dict[str, tuple[int, ...]]]],
    model_id: str,
    words: int,
) -> list[Target]:
    """gRPC streams of `words` chunks: straight to the replica (InvokeStream), and PredictStream
    through each plane's gateway (plane -> (gRPC address, its CPU's pids, their parts)). The
    bytes h2load sends are sent once first with a Python client that sees the gRPC status."""
    payload = json.dumps({"text": " ".join(f"w{i}" for i in range(words))}).encode()
    invoke = rs.InvokeStreamRequest(payload=payload, content_type="application/json").SerializeToString()
    predict = inf.PredictStreamRequest(
        target=inf.Target(model_id=model_id), payload=payload, content_type="application/json"
    ).SerializeToString()
    (work / "invoke-stream.bin").write_bytes(grpc_frame(invoke))
    (work / "predict-stream.bin").write_bytes(grpc_frame(predict))

    def raw_stream(address: str, method: str, request: bytes, metadata) -> list[bytes]:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
            return list(call(request, timeout=30, metadata=metadata))

    direct = raw_stream(replica_address, INVOKE_STREAM, invoke, ((REPLICA_TOKEN_HEADER, replica_token),))
    if len(direct) != words:
        raise RuntimeError(f"the stream replica sent {len(direct)} chunks, not {words}")
    targets = [
        Target(
            "direct replica, gRPC InvokeStream",
            f"http://{replica_address}{INVOKE_STREAM}",
            work / "invoke-stream.bin",
            [*GRPC_HEADERS, "-H", f"{REPLICA_TOKEN_HEADER}: {replica_token}"],
            False,
            sum(5 + len(chunk) for chunk in direct),
            chunks=words,
        )
    ]
    for plane, (address, pids, parts) in gateways.items():
        chunks = poll(
            lambda a=address: _stream_or_none(raw_stream, a, predict, routing_metadata(model_id)),
            timeout=30,
            interval=0.2,
            what=f"a stream through the {plane} gateway",
        )
        if len(chunks) != words:
            raise RuntimeError(f"the {plane} gateway streamed {len(chunks)} chunks, not {words}")
        targets.append(
            Target(
                f"gateway{LABELS[plane]}, gRPC PredictStream",
                f"http://{address}{PREDICT_STREAM}",
                work / "predict-stream.bin",
                [*GRPC_HEADERS, *routing_headers(model_id)],
                False,
                sum(5 + len(chunk) for chunk in chunks),
                pids,
                parts,
                chunks=words,
            )
        )
    say(f"  sanity: {words}-chunk streams direct and through {', '.join(gateways)}")
    return targets


def _stream_or_none(raw_stream, address: str, request: bytes, metadata) -> list[bytes] | None:
    try:
        return raw_stream(address, PREDICT_STREAM, request, metadata)
    except grpc.RpcError:
        return None  # the gateway may not route the new model yet


# --- cold starts ------------------------------------------------------------------------------


def cold_starts(controller: str, gateways: dict[str, str], model_id: str, deployment_id: str, runs: int):
    """A request through each plane's gateway (plane -> gRPC address) to a production that
    is scaled to zero, until its answer, `runs` times each (the planes in turns). The client
    is Python (grpcio): one request at a time, whose own CPU does not matter here."""
    autoscale(controller, deployment_id, autoscaling_window=10, scale_down_delay=0)  # x time scale 0.01
    times: dict[str, list[float]] = {plane: [] for plane in gateways}
    request = inf.PredictRequest(target=inf.Target(model_id=model_id), payload=b'{"text": "cold"}')
    channels = {plane: grpc.insecure_channel(address) for plane, address in gateways.items()}
    try:
        stubs = {plane: inf_grpc.InferenceServiceStub(channel) for plane, channel in channels.items()}
        for _ in range(runs):
            for plane, stub in stubs.items():
                poll(
                    lambda: (
                        (d := state(controller, deployment_id)).state == r.DEPLOYMENT_STATE_SCALED_TO_ZERO
                        and not d.replicas
                    ),
                    what="the cold model to scale to zero",
                )
                time.sleep(0.3)  # every gateway's (and proxy's) table drops the last replica too (not measured)
                started = time.perf_counter()
                stub.Predict(request, timeout=60, metadata=routing_metadata(model_id))
                times[plane].append(time.perf_counter() - started)
    finally:
        for channel in channels.values():
            channel.close()
    for plane, seconds in times.items():
        say(f"  cold start through the {plane} gateway: " + ", ".join(f"{s * 1000:.0f}" for s in seconds) + " ms")
    return times


# --- the summary ------------------------------------------------------------------------------


def summary(runs: list[Run], planes: list[str], cold: dict[str, list[float]], concurrency: int) -> None:
    """One table per protocol: each path's figures and, for the native plane, issue 17's targets."""

    def run_of(name: str, c: int) -> Run | None:
        return next((run for run in runs if run.path == name and run.concurrency == c), None)

    def per_request(run: Run | None, name: str) -> float:
        if run is None or name not in run.cpu:
            return math.nan
        return run.cpu[name] * 1000 / run.requests

    direct1, direct_n = run_of("direct replica, gRPC Invoke", 1), run_of("direct replica, gRPC Invoke", concurrency)
    say()
    say(f"## Data planes side by side (direct to the replica, {', '.join(planes)}): issue 17's targets")
    say()
    say(
        f"| path | req/s c=1 | req/s c={concurrency} | c={concurrency} / direct | p50 ms c=1 | p99 ms c=1 | "
        f"p50 ms c={concurrency} | p99 ms c={concurrency} | added p50 ms c=1 | proxy ms CPU/req | "
        "replica ms CPU/req | proxy / replica |"
    )
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    paths = ["direct replica, gRPC Invoke"]
    for plane in planes:
        paths += [f"gateway{LABELS[plane]}, gRPC Predict", f"gateway{LABELS[plane]}, HTTP/1.1 POST"]
    for path in paths:
        one, many = run_of(path, 1), run_of(path, concurrency)
        if one is None or many is None:
            continue
        direct = path.startswith("direct")
        throughput = many.req_per_s / direct_n.req_per_s if direct_n and not direct else math.nan
        added = one.p50_ms - direct1.p50_ms if direct1 and not direct else math.nan
        proxy, replica = per_request(many, "gateway"), per_request(many, "replica")
        say(
            f"| {path} | {one.req_per_s:.0f} | {many.req_per_s:.0f} | {fmt(throughput)} | {fmt(one.p50_ms, 3)} | "
            f"{fmt(one.p99_ms, 3)} | {fmt(many.p50_ms, 3)} | {fmt(many.p99_ms, 3)} | {fmt(added, 3)} | "
            f"{fmt(math.nan if direct else proxy, 3)} | {fmt(replica, 3)} | "
            f"{fmt(math.nan if direct else proxy / replica)} |"
        )
    say(
        f"| *target, native plane* | | | *>= {TARGET_THROUGHPUT}* | | | | | *<= {TARGET_ADDED_P50_MS}* | | | "
        f"*<= {TARGET_CPU_RATIO}* |"
    )
    say()
    say(
        f"Targets for the native plane: c={concurrency} throughput >= {TARGET_THROUGHPUT}x direct; added p50 at c=1 "
        f"<= {TARGET_ADDED_P50_MS} ms; proxy CPU per request <= {TARGET_CPU_RATIO}x the replica's; cold start "
        f"from zero no slower than today's (~{TARGET_COLD_P50_MS:.0f} ms p50). The HTTP rows compare with direct "
        "gRPC Invoke too (the replica's own HTTP route is not measured here). Proxy CPU = every process of the "
        "path: the Python gateway (and its workers); on the native plane HAProxy's processes and the Python "
        "gateway behind them" + (", split here:" if data_plane.NATIVE in planes else ".")
    )
    for plane in planes:
        if plane == data_plane.PYTHON:
            continue
        for path in (f"gateway{LABELS[plane]}, gRPC Predict", f"gateway{LABELS[plane]}, HTTP/1.1 POST"):
            many = run_of(path, concurrency)
            if many is not None:
                parts = ", ".join(
                    f"{name} {per_request(many, name):.3f}"
                    for name in ("haproxy", "python gateway")
                    if name in many.cpu
                )
                say(f"- {path} c={concurrency}: {parts} ms CPU/req")
    if native_runs := [path for path in paths if LABELS[data_plane.NATIVE] in path]:
        say()
        for path in native_runs:
            one, many = run_of(path, 1), run_of(path, concurrency)
            if not (one and many and direct1 and direct_n):
                continue
            checks = [
                ("throughput", many.req_per_s / direct_n.req_per_s >= TARGET_THROUGHPUT),
                ("added p50", one.p50_ms - direct1.p50_ms <= TARGET_ADDED_P50_MS),
                ("proxy CPU", per_request(many, "gateway") <= TARGET_CPU_RATIO * per_request(many, "replica")),
            ]
            say(f"- {path}: " + "; ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in checks))
    say()
    streams = [run for run in runs if run.chunks > 1]
    if streams:
        direct_stream = next((run for run in streams if run.path.startswith("direct")), None)
        say(f"Streaming, {streams[0].concurrency} concurrent gRPC streams of {streams[0].chunks} chunks:")
        say()
        say("| path | chunks/s | / direct | proxy us CPU/chunk | replica us CPU/chunk | stream p50 ms |")
        say("|---|---:|---:|---:|---:|---:|")
        for run in streams:
            rate = run.requests * run.chunks / run.seconds if run.seconds else math.nan
            direct_rate = (
                direct_stream.requests * direct_stream.chunks / direct_stream.seconds
                if direct_stream and direct_stream.seconds
                else math.nan
            )
            chunks = run.requests * run.chunks
            proxy = run.cpu.get("gateway", math.nan) * 1e6 / chunks
            replica = run.cpu.get("replica", math.nan) * 1e6 / chunks
            say(
                f"| {run.path} | {rate:.0f} | {fmt(rate / direct_rate)} | "
                f"{fmt(math.nan if run.path.startswith('direct') else proxy, 1)} | {fmt(replica, 1)} | "
                f"{fmt(run.p50_ms)} |"
            )
        say()
    if cold:
        say("Cold start from zero (scale to zero, then one request through the gateway until its answer):")
        for plane, seconds in cold.items():
            if seconds:
                ms = sorted(s * 1000 for s in seconds)
                say(
                    f"- {plane}: p50 {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms over {len(ms)} "
                    f"(target: no slower than ~{TARGET_COLD_P50_MS:.0f} ms p50)"
                )
        say()
