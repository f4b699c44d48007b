"""What checking API keys costs on the gateway's hot path, both ways in one run.

    .venv/bin/python bench/auth.py            # full run (~2 minutes on 2 cores)
    .venv/bin/python bench/auth.py --quick    # small counts, a smoke run

One controller (keys on) and two gateway processes following it: one checking keys, one
started with --insecure-no-auth. One echo replica serves both. h2load (as in
bench/gateway.py, whose helpers this uses) drives gRPC Predict and HTTP/1.1 POST on each
gateway at concurrency 1 and 32, the two gateways alternating run by run, twice each, so
machine drift hits both alike. The key is an inference key limited to the model: the
check includes the model test. Also printed: the in-process cost of one verification
(parse, SHA-256, constant-time compare, expiry, scope).

It prints figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench.common import free_port, machine_info  # noqa: E402
from bench.gateway import (  # noqa: E402
    GRPC_HEADERS,
    PAYLOAD,
    PREDICT,
    PY,
    Target,
    grpc_frame,
    make_package,
    measure,
    say,
    stop,
    wait_serving,
)
from slipway import keys  # noqa: E402
from slipway.client import SlipwayClient  # noqa: E402
from slipway.credentials import find_api_key  # noqa: E402
from slipway.v1 import inference_service_pb2 as inf  # noqa: E402


def slipway(controller: str, data_dir: pathlib.Path, *args: str) -> str:
    result = subprocess.run(
        [PY, "-m", "slipway", "--controller", controller, "--data-dir", str(data_dir), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode != 0:
        raise RuntimeError(f"slipway {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def start_gateway(controller: str, work: pathlib.Path, name: str, *flags: str) -> tuple[subprocess.Popen, int, int]:
    grpc_port, http_port = free_port(), free_port()
    log = open(work / f"gateway-{name}.log", "wb")
    process = subprocess.Popen(
        [
            PY,
            "-m",
            "slipway",
            "--controller",
            controller,
            "gateway",
            "--gateway-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--log-level",
            "WARNING",
            *flags,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_serving(f"127.0.0.1:{grpc_port}", process, f"gateway {name}")
    return process, grpc_port, http_port


def http_status(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=PAYLOAD, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def verify_cost_us(rounds: int) -> float:
    key_id, key = keys.new_key()
    records = {key_id: keys.KeyRecord(key_id, keys.key_sha256(key), keys.Scope.INFERENCE, frozenset({"m1"}))}
    header = f"Api-Key {key}"

    def check() -> None:
        record = keys.verify(header, records, time.time())
        keys.require(record, keys.Scope.INFERENCE, "predict")
        keys.require_model(record, "m1")

    return timeit.timeit(check, number=rounds) / rounds * 1e6


def status_from(source: str, port: int, path: str, headers: dict[str, str]) -> int:
    """POST from the loopback address `source`: the gateway slows refusals per peer host,
    so each timed revocation asks from a host with no refusals yet."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request("POST", path, body=PAYLOAD, headers={"Content-Type": "application/json", **headers})
        return connection.getresponse().status
    finally:
        connection.close()


def revocation_delays_ms(
    controller: str, data_dir: pathlib.Path, http_port: int, path: str, model_id: str, runs: int
) -> list[float]:
    """From the RevokeKey answer to the first refusal of the key by the (separate) gateway."""
    delays = []
    with SlipwayClient(controller, api_key=find_api_key(data_dir=data_dir)) as client:
        for run in range(runs):
            source = f"127.0.1.{run + 1}"
            created = client.create_key("inference", [model_id])
            headers = {"Authorization": f"Api-Key {created.secret_key}"}
            while status_from(source, http_port, path, headers) != 200:
                time.sleep(0.005)
            client.revoke_key(created.key.id)
            revoked = time.perf_counter()
            while status_from(source, http_port, path, headers) != 401:
                pass
            delays.append((time.perf_counter() - revoked) * 1000)
    return sorted(delays)


def main(args: argparse.Namespace) -> int:
    if shutil.which("h2load") is None:
        print("h2load not found: run `make bench-deps` (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    work = pathlib.Path(tempfile.mkdtemp(prefix="slipway-bench-auth-"))
    data_dir = work / "data"
    controller_port = free_port()
    controller_address = f"127.0.0.1:{controller_port}"
    processes: list[tuple[subprocess.Popen, str]] = []
    try:
        controller = subprocess.Popen(
            [PY, "-m", "slipway", "controller", "--port", str(controller_port), "--data-dir", str(data_dir)],
            cwd=REPO,
            stdout=open(work / "controller.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        processes.append((controller, "controller"))
        wait_serving(controller_address, controller, "controller")
        checking, checking_grpc, checking_http = start_gateway(controller_address, work, "keys")
        processes.insert(0, (checking, "gateway (keys)"))
        open_gateway, open_grpc, open_http = start_gateway(controller_address, work, "open", "--insecure-no-auth")
        processes.insert(0, (open_gateway, "gateway (no auth)"))

        package = make_package(work, args.predict_concurrency)
        pushed = json.loads(
            slipway(controller_address, data_dir, "push", str(package), "--promote", "-o", "json", "--timeout", "120")
        )
        model_id = pushed["model"]["id"]
        created = json.loads(
            slipway(
                controller_address,
                data_dir,
                "keys",
                "create",
                "--scope",
                "inference",
                "--model",
                model_id,
                "-o",
                "json",
            )
        )
        key = created["secret_key"]
        predict = inf.PredictRequest(
            target=inf.Target(model_id=model_id), payload=PAYLOAD, content_type="application/json"
        ).SerializeToString()
        (work / "predict.bin").write_bytes(grpc_frame(predict))
        (work / "predict.json").write_bytes(PAYLOAD)
        key_header = ["-H", f"authorization: Api-Key {key}"]
        path = f"/model/{model_id}/production/predict"

        deadline = time.monotonic() + 30
        while http_status(f"http://127.0.0.1:{checking_http}{path}", {"Authorization": f"Api-Key {key}"})[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the key-checking gateway does not serve the model with the key")
            time.sleep(0.2)
        status, body = http_status(f"http://127.0.0.1:{open_http}{path}", {})
        refused, _ = http_status(f"http://127.0.0.1:{checking_http}{path}", {})
        if status != 200 or refused != 401:
            raise RuntimeError(f"sanity: open gateway {status} {body!r}, keyed gateway without a key {refused}")
        _, answer = http_status(f"http://127.0.0.1:{checking_http}{path}", {"Authorization": f"Api-Key {key}"})
        say(f"  sanity: both gateways answer {answer.decode()}; the checking one refuses no key with {refused}")

        # gRPC errors are HTTP 200 without a message: h2load's byte count tells them apart.
        with grpc.insecure_channel(f"127.0.0.1:{checking_grpc}") as channel:
            raw = channel.unary_unary(PREDICT)(predict, metadata=(("authorization", f"Api-Key {key}"),), timeout=10)
        grpc_bytes = 5 + len(raw)
        targets = {
            ("gRPC", False): Target(
                "no auth, gRPC",
                f"http://127.0.0.1:{open_grpc}{PREDICT}",
                work / "predict.bin",
                GRPC_HEADERS,
                False,
                grpc_bytes,
            ),
            ("gRPC", True): Target(
                "API key, gRPC",
                f"http://127.0.0.1:{checking_grpc}{PREDICT}",
                work / "predict.bin",
                GRPC_HEADERS + key_header,
                False,
                grpc_bytes,
            ),
            ("HTTP", False): Target(
                "no auth, HTTP/1.1",
                f"http://127.0.0.1:{open_http}{path}",
                work / "predict.json",
                ["-H", "content-type: application/json"],
                True,
                len(answer),
            ),
            ("HTTP", True): Target(
                "API key, HTTP/1.1",
                f"http://127.0.0.1:{checking_http}{path}",
                work / "predict.json",
                ["-H", "content-type: application/json", *key_header],
                True,
                len(answer),
            ),
        }
        pids = {
            "gateway": 0,
            "replica": int(
                json.loads(
                    slipway(
                        controller_address, data_dir, "deployments", "get", pushed["deployment"]["id"], "-o", "json"
                    )
                )["replicas"][0]["pid"]
            ),
        }
        gateway_pid = {False: open_gateway.pid, True: checking.pid}
        results: dict[tuple[str, bool, int], list] = {}
        for protocol in ("gRPC", "HTTP"):
            for concurrency, requests in ((1, args.c1_requests), (args.concurrency, args.cn_requests)):
                for _ in range(2):
                    for with_key in (False, True):
                        pids["gateway"] = gateway_pid[with_key]
                        run = measure(targets[(protocol, with_key)], concurrency, requests, args.warmup, pids, work)
                        results.setdefault((protocol, with_key, concurrency), []).append(run)

        delays = revocation_delays_ms(controller_address, data_dir, checking_http, path, model_id, args.revocations)
        say()
        say("## API key checking on the gateway (bench/auth.py)")
        say()
        for line in machine_info():
            say(line)
        say(f"- one verification in-process: {verify_cost_us(20000):.1f} µs (parse, SHA-256, compare, scope, model)")
        say(
            f"- revocation to the gateway's first refusal, {len(delays)} runs: "
            f"p50 {delays[len(delays) // 2]:.1f} ms, max {delays[-1]:.1f} ms"
        )
        say()
        say("| path | concurrency | req/s (two runs) | p50 ms | p99 ms | gateway ms CPU/req | failed |")
        say("|---|---:|---:|---:|---:|---:|---:|")
        for (protocol, with_key, concurrency), runs in sorted(results.items()):
            name = targets[(protocol, with_key)].name
            rates = ", ".join(f"{r.req_per_s:.0f}" for r in runs)
            p50 = sum(r.p50_ms for r in runs) / len(runs)
            p99 = sum(r.p99_ms for r in runs) / len(runs)
            cpu = sum(r.cpu["gateway"] for r in runs) / sum(r.requests for r in runs) * 1000
            failed = sum(r.failed + r.non_2xx + r.bad_bodies for r in runs)
            say(f"| {name} | {concurrency} | {rates} | {p50:.2f} | {p99:.2f} | {cpu:.3f} | {failed} |")
        return 0
    finally:
        for process, name in processes:
            stop(process, name)
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--c1-requests", type=int, default=2000)
    parser.add_argument("--cn-requests", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--predict-concurrency", type=int, default=64)
    parser.add_argument("--revocations", type=int, default=20, help="revocations timed")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.c1_requests, args.cn_requests, args.warmup = 300, 1500, 100
    return args


if __name__ == "__main__":
    os.environ.pop("SLIPWAY_API_KEY", None)
    sys.exit(main(parse_args()))
