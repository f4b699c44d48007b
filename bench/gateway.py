"""Data-plane benchmark: each gateway data plane's cost over calling a replica directly.

    .venv/bin/python bench/gateway.py                      # full run (~4 minutes on 2 cores)
    .venv/bin/python bench/gateway.py --quick              # small counts, a smoke run (~40 s)
    .venv/bin/python bench/gateway.py --data-plane python  # one plane: python or native (default all)

Needs h2load (`make bench-deps` installs the nghttp2-client package). It starts its own
controller and one gateway per data plane (slipway/data_plane.py; native where this tree
and machine can run it) on free 127.0.0.1 ports with a temporary data directory, pushes
a copy of examples/echo with runtime.predict_concurrency 64 as production (one pinned
replica), and drives with h2load, the load generator (not Python):

1. direct to the replica: gRPC slipway.v1.ReplicaService/Invoke; and the replica's own
   routes the native data plane forwards to (replica/direct.py): HTTP/1.1 POST /predict
   and gRPC slipway.v1.InferenceService/Predict;
2. through each plane over gRPC: slipway.v1.InferenceService/Predict by model ID, with
   the routing metadata the SDK sends (the native plane routes by it);
3. through each plane over HTTP/1.1: POST /model/{id}/production/predict (JSON);

each at concurrency 1 and 32 (one stream per connection), a warm-up then a fixed request
count, the planes in turns (`--repeats`). Then 32 concurrent 100-chunk gRPC streams
(examples/stream) direct and through each plane, and cold starts from zero through each
plane. Latency percentiles come from h2load's --log-file (per request), req/s from its
summary. CPU per request is read from /proc/PID/stat (utime+stime) of the proxy (the
Python gateway; on the native plane HAProxy's processes and the Python gateway) and the
replica around each measured run. `--metrics-cost` adds a python gateway with
--no-metrics, in turns with the others: what the metrics cost.

It prints figures, beside issue 17's targets; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import yaml  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from bench.common import free_port, machine_info  # noqa: E402
from bench.data_planes import (  # noqa: E402
    LABELS,
    autoscale,
    cold_starts,
    copy_example,
    haproxy_pids,
    native_unavailable,
    plane_flags,
    routing_headers,
    routing_metadata,
    stream_targets,
    summary,
)
from bench.h2load import (  # noqa: E402, F401  (bench/proxy_floor.py takes them from here too)
    CLOCK_TICKS,
    Run,
    Target,
    cpu_of,
    cpu_seconds,
    fmt,
    grpc_frame,
    h2load,
    measure,
    parse_log,
    say,
)
from slipway import data_plane  # noqa: E402
from slipway.data_plane import REPLICA_PREDICT_PATH  # noqa: E402
from slipway.internal_auth import REPLICA_TOKEN_HEADER  # noqa: E402
from slipway.v1 import inference_service_pb2 as inf  # noqa: E402
from slipway.v1 import replica_service_pb2 as rs  # noqa: E402

PY = sys.executable
PAYLOAD = b'{"text": "hello"}'
EXPECTED_OUTPUT = {"echo": {"text": "hello"}}
INVOKE = "/slipway.v1.ReplicaService/Invoke"
PREDICT = "/slipway.v1.InferenceService/Predict"
GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def worker_pids(parent: int, count: int, timeout: float = 30.0) -> list[int]:
    """The gateway processes that serve: the parent itself, or its `count` workers."""
    if count == 1:
        return [parent]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [int(p) for p in pathlib.Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        if len(children) == count:
            return children
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not start {count} workers")


def wait_serving(address: str, process: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with code {process.returncode} while starting")
            with contextlib.suppress(grpc.RpcError):
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.05)
    raise RuntimeError(f"{what} at {address} not serving after {timeout:g}s")


def stop(process: subprocess.Popen | None, what: str, timeout: float = 45.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        say(f"  ! {what} did not stop on SIGTERM within {timeout:g}s; killing it")
        process.kill()
        process.wait()


def slipway(controller: str, *args: str, timeout: float = 120.0) -> str:
    result = subprocess.run(
        [PY, "-m", "slipway", "--controller", controller, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"slipway {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def sanity_checks(
    work: pathlib.Path,
    replica_address: str,
    replica_token: str,
    gateway_grpc: str,
    http_base: str,
    model_id: str,
    deployment_id: str,
    gateway_pids: tuple[int, ...],
    label: str = "",
    gateway_parts: dict[str, tuple[int, ...]] | None = None,
) -> list[Target]:
    """Write the request bodies h2load sends, and send those exact bytes once with Python
    clients that see the gRPC status (h2load only sees HTTP status codes)."""
    invoke = rs.InvokeRequest(payload=PAYLOAD, content_type="application/json").SerializeToString()
    predict = inf.PredictRequest(
        target=inf.Target(model_id=model_id), payload=PAYLOAD, content_type="application/json"
    ).SerializeToString()
    (work / "invoke.bin").write_bytes(grpc_frame(invoke))
    (work / "predict.bin").write_bytes(grpc_frame(predict))
    (work / "predict.json").write_bytes(PAYLOAD)

    with grpc.insecure_channel(replica_address) as channel:
        call = channel.unary_unary(INVOKE, request_serializer=None, response_deserializer=None)
        raw_invoke = call(
            (work / "invoke.bin").read_bytes()[5:], timeout=10, metadata=((REPLICA_TOKEN_HEADER, replica_token),)
        )
    answer = rs.InvokeResponse.FromString(raw_invoke)
    if json.loads(answer.payload) != EXPECTED_OUTPUT:
        raise RuntimeError(f"replica answered {answer.payload!r}")

    with grpc.insecure_channel(gateway_grpc) as channel:
        call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
        deadline = time.monotonic() + 30
        while True:  # the gateway may not have the new production route yet
            try:
                raw_predict = call(
                    (work / "predict.bin").read_bytes()[5:], timeout=10, metadata=routing_metadata(model_id)
                )
                break
            except grpc.RpcError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway Predict: {error.code().name}: {error.details()}") from None
                time.sleep(0.2)
    predicted = inf.PredictResponse.FromString(raw_predict)
    if json.loads(predicted.payload) != EXPECTED_OUTPUT or predicted.deployment_id != deployment_id:
        raise RuntimeError(f"gateway answered {predicted}")

    http_url = f"{http_base}/model/{model_id}/production/predict"
    request = urllib.request.Request(
        http_url, data=PAYLOAD, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        http_body = response.read()
    if json.loads(http_body) != EXPECTED_OUTPUT:
        raise RuntimeError(f"gateway HTTP answered {http_body!r}")

    say(
        f"  sanity: replica Invoke -> {answer.payload.decode()}; gateway Predict -> {predicted.payload.decode()} "
        f"from {predicted.deployment_id}; HTTP -> {http_body.decode()}"
    )
    return [
        Target(
            "direct replica, gRPC Invoke",
            f"http://{replica_address}{INVOKE}",
            work / "invoke.bin",
            [*GRPC_HEADERS, "-H", f"{REPLICA_TOKEN_HEADER}: {replica_token}"],
            False,
            5 + len(raw_invoke),
        ),
        Target(
            f"gateway{label}, gRPC Predict",
            f"http://{gateway_grpc}{PREDICT}",
            work / "predict.bin",
            [*GRPC_HEADERS, *routing_headers(model_id)],
            False,
            5 + len(raw_predict),
            gateway_pids,
            gateway_parts or {},
        ),
        Target(
            f"gateway{label}, HTTP/1.1 POST",
            http_url,
            work / "predict.json",
            ["-H", "content-type: application/json"],
            True,
            len(http_body),
            gateway_pids,
            gateway_parts or {},
        ),
    ]


def direct_route_targets(
    work: pathlib.Path, state_file: pathlib.Path, replica_address: str, replica_token: str, deployment_id: str
) -> list[Target]:
    """The replica's own routes (replica/direct.py), checked once with Python clients; the
    request bodies are the ones sanity_checks wrote."""
    host = replica_address.rpartition(":")[0]
    url = f"http://{host}:{json.loads(state_file.read_text())['http_port']}{REPLICA_PREDICT_PATH}"
    headers = {"Content-Type": "application/json", REPLICA_TOKEN_HEADER: replica_token}
    with urllib.request.urlopen(urllib.request.Request(url, data=PAYLOAD, headers=headers), timeout=10) as response:
        http_body = response.read()
    if json.loads(http_body) != EXPECTED_OUTPUT:
        raise RuntimeError(f"replica HTTP answered {http_body!r}")
    with grpc.insecure_channel(replica_address) as channel:
        call = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
        raw_predict = call(
            (work / "predict.bin").read_bytes()[5:], timeout=10, metadata=((REPLICA_TOKEN_HEADER, replica_token),)
        )
    if inf.PredictResponse.FromString(raw_predict).deployment_id != deployment_id:
        raise RuntimeError(f"replica Predict answered {inf.PredictResponse.FromString(raw_predict)}")
    token = ["-H", f"{REPLICA_TOKEN_HEADER}: {replica_token}"]
    return [
        Target(
            "direct replica, HTTP/1.1 POST /predict",
            url,
            work / "predict.json",
            ["-H", "content-type: application/json", *token],
            True,
            len(http_body),
        ),
        Target(
            "direct replica, gRPC InferenceService/Predict",
            f"http://{replica_address}{PREDICT}",
            work / "predict.bin",
            [*GRPC_HEADERS, *token],
            False,
            5 + len(raw_predict),
        ),
    ]


def gateway_machine_info() -> list[str]:
    import aiohttp
    import google.protobuf

    load = " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    return [
        *machine_info(f"protobuf {google.protobuf.__version__}; aiohttp {aiohttp.__version__}; {h2}"),
        f"- load average before the run: {load}",
        f"- load generator (h2load, 1 thread), gateway and replica (and the idle controller) share these "
        f"{len(os.sched_getaffinity(0))} cores: every figure includes that contention.",
    ]


def report(runs: list[Run], args: argparse.Namespace, total_seconds: float) -> None:
    say()
    workers = f", gateway --workers {args.gateway_workers}" if args.gateway_workers > 1 else ""
    say(f"## Gateway data-plane benchmark (examples/echo, predict_concurrency 64, one replica{workers})")
    say()
    for line in gateway_machine_info():
        say(line)
    say(
        f"- {args.warmup} warm-up requests before each measured run; h2load `-m 1` (one stream per connection); "
        f"whole benchmark {total_seconds:.0f} s"
    )
    say()
    say("| path | concurrency | requests | req/s | p50 ms | p99 ms | failed |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        bad = run.failed + run.non_2xx
        note = f" (+{run.bad_bodies} gRPC errors by body size)" if run.bad_bodies else ""
        say(
            f"| {run.path} | {run.concurrency} | {run.requests} | {run.req_per_s:.0f} | {fmt(run.p50_ms)} | "
            f"{fmt(run.p99_ms)} | {bad}{note} |"
        )
    say()
    say(
        "`failed` = h2load failed/errored/timed-out requests + non-2xx statuses. gRPC errors come as HTTP 200 "
        "with a grpc-status trailer and no message, so each run's DATA bytes are also checked against "
        "requests x the size of the good response (sent once beforehand with a Python client): "
        + ("all runs match." if not any(r.bad_bodies for r in runs) else "MISMATCH, see the table.")
    )
    say()

    def run_of(path_prefix: str, c: int) -> Run | None:
        return next((r for r in runs if r.path.startswith(path_prefix) and r.concurrency == c), None)

    say("Added latency of the gateway at concurrency 1 (p50, vs direct gRPC to the replica; first turn):")
    direct = run_of("direct replica, gRPC Invoke", 1)
    for path in dict.fromkeys(r.path for r in runs if r.path.startswith("gateway") and r.chunks == 1):
        through = run_of(path, 1)
        if direct and through:
            say(
                f"- {through.path}: +{through.p50_ms - direct.p50_ms:.3f} ms "
                f"(p50 {through.p50_ms:.3f} vs {direct.p50_ms:.3f} ms; p99 +{through.p99_ms - direct.p99_ms:.3f} ms)"
            )
    say("  (the HTTP path calls the replica's InvokeStream, the gRPC paths its unary Invoke)")
    say()
    if args.metrics_cost:
        metrics_cost(runs, direct)
    say(
        "CPU per request (utime+stime from /proc/PID/stat around the measured run, all threads; "
        f"clock tick {1000 / CLOCK_TICKS:g} ms):"
    )
    say()
    say(
        "| path | concurrency | gateway ms CPU/req | replica ms CPU/req | gateway / replica | "
        "gateway busy (cores) | gateway loop thread (cores) | replica busy (cores) | replica loop thread (cores) | "
        "h2load ms CPU/req | irq+softirq (cores) | other processes (cores) | steal (cores) |"
    )
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:

        def per(name: str, run=run) -> float:
            return run.cpu.get(name, math.nan) * 1000 / run.requests

        def busy(name: str, run=run) -> float:
            return run.cpu.get(name, math.nan) / run.seconds if run.seconds else math.nan

        direct = run.path.startswith("direct")
        gateway = math.nan if direct else per("gateway")
        ratio = math.nan if direct or not run.cpu.get("replica") else run.cpu["gateway"] / run.cpu["replica"]
        say(
            f"| {run.path} | {run.concurrency} | {fmt(gateway, 3)} | {fmt(per('replica'), 3)} | {fmt(ratio)} | "
            f"{fmt(math.nan if direct else busy('gateway'))} | {fmt(math.nan if direct else busy('gateway loop'))} | "
            f"{fmt(busy('replica'))} | {fmt(busy('replica loop'))} | {fmt(per('h2load'), 3)} | "
            f"{fmt(busy('irq'))} | {fmt(busy('other'))} | {fmt(busy('steal'))} |"
        )
    controller = sum(r.cpu.get("controller", 0.0) for r in runs)
    say()
    say(
        "`busy` = CPU seconds / wall seconds of the run, in cores; `loop thread` = the process's main thread, "
        "which runs the asyncio event loop: all request handling in Python (the rest is grpc's poller and "
        "event_engine threads and, in the replica, the predict thread pool)."
    )
    say()
    say(
        f"The controller used {controller:.2f} s CPU over all measured runs (route stream, load reports, reconciler). "
        "Machine-wide columns come from /proc/stat: `irq+softirq` is interrupt time (loopback TCP is processed "
        "there and charged to no process), `other processes` is user+system time of every process minus gateway, "
        "replica, controller and h2load (anything else running competes for the same cores), `steal` is time "
        "the hypervisor gave to other guests."
    )


NO_METRICS = " (--no-metrics)"


def metrics_cost(runs: list[Run], direct: Run | None) -> None:
    """Metrics on against off, from every measured turn of each (throughput: all requests
    over all seconds; p50: the mean of the turns' p50s)."""

    def pooled(path: str, c: int) -> tuple[float, float, int]:
        turns = [r for r in runs if r.path == path and r.concurrency == c]
        seconds = sum(r.seconds for r in turns)
        rate = sum(r.requests for r in turns) / seconds if seconds else math.nan
        p50 = sum(r.p50_ms for r in turns) / len(turns) if turns else math.nan
        return rate, p50, len(turns)

    say("Cost of the gateway's metrics (the same gateway with metrics on, and off with --no-metrics):")
    say()
    say(
        "| path | concurrency | turns | req/s on | req/s off | throughput cost | p50 ms on | p50 ms off | "
        "p50 added by metrics |"
    )
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in ("gateway, gRPC Predict", "gateway, HTTP/1.1 POST"):
        off_path = path.replace("gateway", f"gateway{NO_METRICS}", 1)
        for c in sorted({r.concurrency for r in runs}):
            on_rate, on_p50, turns = pooled(path, c)
            off_rate, off_p50, _ = pooled(off_path, c)
            if not turns:
                continue
            cost = (off_rate - on_rate) / off_rate * 100 if off_rate else math.nan
            say(
                f"| {path} | {c} | {turns} | {on_rate:.0f} | {off_rate:.0f} | {cost:+.1f}% | {fmt(on_p50, 3)} | "
                f"{fmt(off_p50, 3)} | {on_p50 - off_p50:+.3f} ms |"
            )
    say("(throughput cost: how much lower req/s is with metrics on; negative means higher, i.e. noise)")
    say()

    def cpu_per_request(path: str, c: int) -> float:
        turns = [r for r in runs if r.path == path and r.concurrency == c]
        requests = sum(r.requests for r in turns)
        return sum(r.cpu.get("gateway", 0.0) for r in turns) * 1000 / requests if requests else math.nan

    say("Gateway CPU per request, metrics on vs off (less sensitive to other load than req/s):")
    for path in ("gateway, gRPC Predict", "gateway, HTTP/1.1 POST"):
        off_path = path.replace("gateway", f"gateway{NO_METRICS}", 1)
        for c in sorted({r.concurrency for r in runs if r.path == path}):
            on, off = cpu_per_request(path, c), cpu_per_request(off_path, c)
            say(f"- {path} c={c}: {on:.3f} vs {off:.3f} ms CPU/req ({(on - off) / off * 100:+.1f}%)")
    per_request_us = observation_cost_us()
    gateway_cpu = cpu_per_request("gateway, gRPC Predict", 32)
    say(
        f"- in-process, one request's observation (start, routed, done: labels looked up, counter, histogram): "
        f"{per_request_us:.2f} us, {per_request_us / 1000 / gateway_cpu * 100:.2f}% of the gateway's CPU per "
        "gRPC request at c=32"
    )
    say()


def observation_cost_us(iterations: int = 200_000) -> float:
    """Microseconds the gateway's metrics add to one request, timed in this process on
    the gateway's own code (gateway/metrics.py), against metrics off."""
    from gateway.forwarder import LoadMeter
    from gateway.metrics import GRPC, GatewayMetrics
    from gateway.routing import RouteIndex
    from slipway.v1 import route_service_pb2 as rt

    index = RouteIndex()
    index.apply(
        rt.WatchRoutesResponse(
            reset=True,
            models=[rt.ModelRoute(model_id="m1", model_name="m", production_deployment_id="d1")],
            deployments=[rt.DeploymentRoute(deployment_id="d1", model_id="m1", active=True)],
        )
    )
    deployment = index.deployments["d1"]

    def timed(enabled: bool) -> float:
        metrics = GatewayMetrics(lambda: index, enabled=enabled)
        # The load meter is fed either way (ReportLoad needs it): the difference is Prometheus's.
        meter = LoadMeter()
        metrics.count_answers(lambda deployment_id, status_class, seconds: meter.answer(status_class, seconds))
        started = time.perf_counter()
        for _ in range(iterations):
            observation = metrics.start(GRPC)
            observation.routed(deployment)
            observation.done("OK", 200)
        return (time.perf_counter() - started) / iterations * 1e6

    return min(timed(True) for _ in range(3)) - min(timed(False) for _ in range(3))


def scraped_requests(http_base: str) -> float:
    """The sum of slipway_inference_requests_total on a gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{http_base}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "slipway_inference_requests_total"
    )


def make_package(work: pathlib.Path, concurrency: int) -> pathlib.Path:
    package = work / "echo"
    shutil.copytree(REPO / "examples" / "echo", package)
    config_file = package / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config.setdefault("runtime", {})["predict_concurrency"] = concurrency
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return package


def start_gateway(
    controller: str, grpc_port: int, http_port: int, work: pathlib.Path, args: argparse.Namespace, log, *extra: str
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            PY,
            "-m",
            "slipway",
            "--controller",
            controller,
            "gateway",
            "--host",
            "127.0.0.1",
            "--gateway-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--internal-token-file",
            str(work / "data" / "internal.token"),
            "--log-level",
            args.log_level,
            "--insecure-no-auth",
            *extra,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def choose_planes(choice: str) -> list[str] | None:
    """The data planes to measure (None: the one asked for cannot run here)."""
    planes = [data_plane.PYTHON, data_plane.NATIVE] if choice == "all" else [choice]
    if data_plane.NATIVE in planes and (reason := native_unavailable()) is not None:
        if choice == data_plane.NATIVE:
            print(f"the native data plane cannot run here: {reason}", file=sys.stderr)
            return None
        say(f"native data plane SKIPPED: {reason}")
        planes.remove(data_plane.NATIVE)
    return planes


def push(controller: str, package: pathlib.Path, work: pathlib.Path, pin: bool = True) -> tuple[str, str, dict, str]:
    """Push as production, with `pin` one replica pinned: (model ID, deployment ID, the replica, its token)."""
    pushed = json.loads(slipway(controller, "push", str(package), "--promote", "--output", "json", "--timeout", "120"))
    model_id, deployment_id = pushed["model"]["id"], pushed["deployment"]["id"]
    if pin:
        autoscale(controller, deployment_id, min_replica=1, max_replica=1)  # the controller's time scale is 0.01
    deployment = json.loads(slipway(controller, "deployments", "get", deployment_id, "--output", "json"))
    replicas = [r for r in deployment.get("replicas", []) if r.get("address")]
    if len(replicas) != 1:
        raise RuntimeError(f"expected one replica, got {deployment.get('replicas')}")
    # Direct calls to the replica carry its token, as the gateway's do.
    token = (work / "data" / "run" / f"{replicas[0]['id']}.token").read_text().strip()
    return model_id, deployment_id, replicas[0], token


def main(args: argparse.Namespace) -> int:
    if shutil.which("h2load") is None:
        print("h2load not found: run `make bench-deps` (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    planes = choose_planes(args.data_plane)
    if not planes:
        return 2
    started = time.monotonic()
    work = pathlib.Path(tempfile.mkdtemp(prefix="slipway-bench-gateway-"))
    controller_port = free_port()
    controller_address = f"127.0.0.1:{controller_port}"
    controller = bare = None
    gateways: dict[str, tuple[subprocess.Popen, int, int]] = {}  # plane -> (process, gRPC port, HTTP port)
    bare_grpc_port, bare_http_port = free_port(), free_port()
    replica_pids: list[int] = []
    logs: list[pathlib.Path] = []
    ok = False
    try:
        say(f"work dir {work}; controller :{controller_port}; data planes: {', '.join(planes)}")
        controller_log = open(work / "controller.log", "wb")
        logs.append(work / "controller.log")
        controller = subprocess.Popen(
            [
                PY,
                "-m",
                "slipway",
                "controller",
                "--host",
                "127.0.0.1",
                "--port",
                str(controller_port),
                "--controller-http-port",
                "0",  # 7180 may be taken by anything else on the machine
                "--data-dir",
                str(work / "data"),
                "--log-level",
                args.log_level,
                # The gateway's cost without keys, comparable with earlier runs; bench/auth.py adds them.
                "--insecure-no-auth",
                # Cold starts: a 10 s window is 0.1 s (as bench/cold_start.py); the measured
                # deployments are pinned to one replica.
                "--autoscaling-time-scale",
                "0.01",
                "--wake-hold-seconds",
                "1",
            ],
            cwd=REPO,
            stdout=controller_log,
            stderr=subprocess.STDOUT,
        )
        wait_serving(controller_address, controller, "controller")
        for plane in planes:
            grpc_port, http_port = free_port(), free_port()
            log = work / f"gateway-{plane}.log"
            logs.append(log)
            flags = ["--workers", str(args.gateway_workers), *plane_flags(plane)]
            process = start_gateway(controller_address, grpc_port, http_port, work, args, open(log, "wb"), *flags)
            gateways[plane] = (process, grpc_port, http_port)
            wait_serving(f"127.0.0.1:{grpc_port}", process, f"{plane} gateway")
        if args.metrics_cost:
            bare_log = work / "gateway-no-metrics.log"
            logs.append(bare_log)
            bare = start_gateway(
                controller_address, bare_grpc_port, bare_http_port, work, args, open(bare_log, "wb"), "--no-metrics"
            )
            wait_serving(f"127.0.0.1:{bare_grpc_port}", bare, "gateway --no-metrics")

        model_id, deployment_id, replica, replica_token = push(
            controller_address, make_package(work, args.predict_concurrency), work
        )
        replica_address, replica_pid = replica["address"], int(replica["pid"])
        replica_pids.append(replica_pid)
        say(f"  model {model_id}, production {deployment_id}, replica {replica_address} pid {replica_pid}")

        # Each plane's CPU: the Python gateway (its workers), and on the native plane HAProxy's too.
        proxies: dict[str, tuple[tuple[int, ...], dict[str, tuple[int, ...]]]] = {}
        for plane, (process, _, _) in gateways.items():
            python_pids = tuple(worker_pids(process.pid, args.gateway_workers))
            if plane == data_plane.PYTHON:
                proxies[plane] = (python_pids, {})
            else:
                haproxy = tuple(haproxy_pids(process.pid))
                proxies[plane] = (python_pids + haproxy, {"haproxy": haproxy, "python gateway": python_pids})
            say(f"  {plane} gateway pids {proxies[plane][0]}")
        targets: dict[str, list[Target]] = {}
        for plane, (_, grpc_port, http_port) in gateways.items():
            targets[plane] = sanity_checks(
                work,
                replica_address,
                replica_token,
                f"127.0.0.1:{grpc_port}",
                f"http://127.0.0.1:{http_port}",
                model_id,
                deployment_id,
                proxies[plane][0],
                LABELS[plane],
                proxies[plane][1],
            )
        direct = next(iter(targets.values()))[0]
        state_file = work / "data" / "run" / f"{replica['id']}.json"
        own_routes = direct_route_targets(work, state_file, replica_address, replica_token, deployment_id)
        if args.metrics_cost:
            targets["bare"] = sanity_checks(
                work,
                replica_address,
                replica_token,
                f"127.0.0.1:{bare_grpc_port}",
                f"http://127.0.0.1:{bare_http_port}",
                model_id,
                deployment_id,
                (bare.pid,),
                NO_METRICS,
            )
        # "gateway" in the direct runs: the first plane's (idle) gateway, as before.
        first_gateway = list(proxies[planes[0]][0])
        pids = {"gateway": first_gateway, "replica": [replica_pid], "controller": [controller.pid]}
        runs = []
        counts = ((1, args.c1_requests), (args.concurrency, args.cn_requests))
        for target in (direct, *own_routes):
            for concurrency, requests in counts:
                runs.append(measure(target, concurrency, requests, args.warmup, pids, work))
        for protocol in (1, 2):  # gRPC Predict, HTTP/1.1 POST
            group = [paths[protocol] for paths in targets.values()]
            for concurrency, requests in counts:
                for turn in range(args.repeats):  # in turns, reversed every other, so drift falls on all
                    for target in group if turn % 2 == 0 else group[::-1]:
                        runs.append(measure(target, concurrency, requests, args.warmup, pids, work))

        stream_model, _, stream_replica, stream_token = push(
            controller_address, copy_example(work, "stream", "stream", args.predict_concurrency), work
        )
        replica_pids.append(int(stream_replica["pid"]))
        streams = stream_targets(
            work,
            stream_replica["address"],
            stream_token,
            {plane: (f"127.0.0.1:{gateways[plane][1]}", *proxies[plane]) for plane in planes},
            stream_model,
            args.stream_chunks,
        )
        stream_pids = {**pids, "replica": [int(stream_replica["pid"])]}
        for target in streams:
            runs.append(measure(target, args.concurrency, args.stream_requests, args.concurrency, stream_pids, work))

        cold: dict[str, list[float]] = {}
        if args.cold_starts:
            cold_model, cold_deployment, _, _ = push(
                controller_address, copy_example(work, "echo", "cold", 8), work, pin=False
            )
            cold = cold_starts(
                controller_address,
                {plane: f"127.0.0.1:{gateways[plane][1]}" for plane in planes},
                cold_model,
                cold_deployment,
                args.cold_starts,
            )

        if data_plane.PYTHON in gateways:
            counted = scraped_requests(f"http://127.0.0.1:{gateways[data_plane.PYTHON][2]}")
            python_runs = [r for r in runs if r.path.startswith("gateway,")]
            sent = sum(r.requests for r in python_runs)
            say(
                f"  the python gateway's slipway_inference_requests_total: {counted:.0f} (measured requests sent "
                f"to it: {sent}, plus warm-ups, sanity calls and cold starts)"
            )
        report(runs, args, time.monotonic() - started)
        summary(runs, planes, cold, args.concurrency)
        ok = True
        return 0
    finally:
        for plane, (process, _, _) in gateways.items():
            stop(process, f"{plane} gateway")
        stop(bare, "gateway --no-metrics")
        stop(controller, "controller")  # it drains and stops its replicas
        for pid in replica_pids:
            if pathlib.Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
                    if str(work).encode() in cmdline:  # still ours, not a reused pid
                        say(f"  ! replica {pid} outlived the controller; killing it")
                        os.kill(pid, signal.SIGKILL)
        if not ok:
            for log in logs:
                with contextlib.suppress(OSError):
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    print(f"--- last lines of {log}:", *tail, sep="\n", file=sys.stderr)
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--c1-requests", type=int, default=3000, help="requests per run at concurrency 1 (default 3000)"
    )
    parser.add_argument(
        "--cn-requests", type=int, default=20000, help="requests per run at the high concurrency (default 20000)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="the high concurrency (default 32)")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up requests before each run (default 500)")
    parser.add_argument("--predict-concurrency", type=int, default=64, help="the replica's runtime.predict_concurrency")
    parser.add_argument(
        "--log-level", default="WARNING", help="controller/gateway log level (to files; default WARNING)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="turns of each gateway path, the planes in turns (default 2)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, h2load logs)")
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        help="slipway gateway --workers N (CPU figures of the gateway are summed over its workers)",
    )
    parser.add_argument(
        "--data-plane",
        choices=("all", data_plane.PYTHON, data_plane.NATIVE),
        default="all",
        help="the gateway's data planes to measure beside direct (default all: python, and native where it runs)",
    )
    parser.add_argument(
        "--metrics-cost",
        action="store_true",
        help="also a python gateway with --no-metrics, in turns with the others: the metrics' cost",
    )
    parser.add_argument("--stream-requests", type=int, default=640, help="streams per streaming run (default 640)")
    parser.add_argument("--stream-chunks", type=int, default=100, help="chunks per stream (default 100)")
    parser.add_argument(
        "--cold-starts", type=int, default=10, help="cold starts from zero through each plane (default 10; 0: none)"
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.c1_requests, args.cn_requests, args.warmup = 300, 2000, 100
        args.stream_requests, args.cold_starts, args.repeats = 128, 3, 1
    return args


if __name__ == "__main__":

    def _terminate(signum, frame):  # run the cleanup in main's finally on SIGTERM too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main(parse_args()))
