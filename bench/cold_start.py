"""Cold start and scale-up benchmark (prints figures; asserts nothing about time).

1. Cold start: a request through the gateway to a production deployment that is
   scaled to zero, until its answer; p50 and max of N, with replicas forked from the
   pre-imported fork server (the default) and, for comparison, as new interpreters.
2. Scale-up: with one replica serving, a step from 1 to 4 concurrent callers; time
   until a second replica answers a request.
3. Promotion reach: PromoteDeployment of an active published deployment, from its
   answer until a request by model ID through the gateway (a separate process) is
   answered by the new production; p50 and max of 20, both ways in turn.
4. Cold start under the Ray runtime (--runtime ray) on a local two-node Ray cluster on
   loopback (ray.cluster_utils.Cluster), beside the local runtime's (skipped without Ray).

    python bench/cold_start.py [--runs 10] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from google.protobuf import field_mask_pb2  # noqa: E402

from bench.common import ROOT, Platform, machine_info, percentile  # noqa: E402
from slipway.packaging import archive_package  # noqa: E402
from slipway.v1 import deployment_service_pb2 as ds  # noqa: E402
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc  # noqa: E402
from slipway.v1 import inference_service_pb2 as inf  # noqa: E402
from slipway.v1 import inference_service_pb2_grpc as inf_grpc  # noqa: E402
from slipway.v1 import model_service_pb2 as ms  # noqa: E402
from slipway.v1 import model_service_pb2_grpc as ms_grpc  # noqa: E402
from slipway.v1 import resources_pb2 as r  # noqa: E402

# Autoscaling durations are scaled by 0.01: window 10 s -> 0.1 s, so idle deployments sleep quickly.
TIME_SCALE = "0.01"
PID_MODEL = """
import os, time

class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        time.sleep(model_input.get("sleep", 0))
        return {"pid": os.getpid()}
"""


def poll(check, timeout: float = 60.0, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not reached")


class Bench:
    def __init__(self, platform: Platform, work: pathlib.Path) -> None:
        self.platform = platform
        self.work = work
        self.controller = grpc.insecure_channel(platform.controller_address)
        self.deployments = ds_grpc.DeploymentServiceStub(self.controller)
        self.models = ms_grpc.ModelServiceStub(self.controller)
        self.gateway = grpc.insecure_channel(platform.gateway_address)
        self.inference = inf_grpc.InferenceServiceStub(self.gateway)

    def close(self) -> None:
        self.controller.close()
        self.gateway.close()

    def push_production(self, name: str, target=ds.PUSH_TARGET_PRODUCTION, **autoscaling) -> str:
        package = self.work / name
        if not package.exists():
            shutil.copytree(ROOT / "examples" / "echo", package)
            (package / "config.yaml").write_text(f"model_name: {name}\nruntime:\n  predict_concurrency: 8\n")
            (package / "model" / "model.py").write_text(PID_MODEL)
        archive, digest = archive_package(package)
        pushed = self.deployments.CreateDeployment(
            ds.CreateDeploymentRequest(package_archive=archive, package_sha256=digest, target=target)
        )
        if target == ds.PUSH_TARGET_PRODUCTION:
            poll(
                lambda: (
                    self.models.GetModel(ms.GetModelRequest(model_id=name)).model.production_deployment_id
                    == pushed.deployment.id
                )
            )
        deployment = r.Deployment(id=pushed.deployment.id)
        for key, value in autoscaling.items():
            setattr(deployment.autoscaling_settings, key, value)
        self.deployments.UpdateDeployment(
            ds.UpdateDeploymentRequest(
                deployment=deployment,
                update_mask=field_mask_pb2.FieldMask(paths=[f"autoscaling_settings.{k}" for k in autoscaling]),
            )
        )
        return pushed.deployment.id

    def state(self, deployment_id: str) -> r.Deployment:
        return self.deployments.GetDeployment(ds.GetDeploymentRequest(deployment_id=deployment_id)).deployment

    def predict(self, model: str, sleep: float = 0.0) -> dict:
        request = inf.PredictRequest(target=inf.Target(model_id=model), payload=json.dumps({"sleep": sleep}).encode())
        return json.loads(self.inference.Predict(request, timeout=60).payload)

    def cold_starts(self, runs: int) -> list[float]:
        name = f"cold{len(list(self.work.iterdir()))}"
        deployment_id = self.push_production(name, autoscaling_window=10, scale_down_delay=0)
        self.predict(name)  # the first start is not a cold start from zero
        times = []
        for _ in range(runs):
            poll(lambda: (d := self.state(deployment_id)).state == r.DEPLOYMENT_STATE_SCALED_TO_ZERO and not d.replicas)
            time.sleep(0.3)  # let the gateway's route table drop the last replica too (not measured)
            started = time.perf_counter()
            self.predict(name)
            times.append(time.perf_counter() - started)
        return times

    def scale_up(self) -> float:
        deployment_id = self.push_production(
            "step",
            min_replica=1,
            max_replica=4,
            autoscaling_window=10,
            concurrency_target=1,
            target_utilization_percentage=100,
        )
        first_pid = self.predict("step")["pid"]
        stop = threading.Event()
        seen: dict[int, float] = {}

        def caller():
            while not stop.is_set():
                pid = self.predict("step", sleep=0.2)["pid"]
                seen.setdefault(pid, time.perf_counter())

        started = time.perf_counter()
        callers = [threading.Thread(target=caller) for _ in range(4)]
        for thread in callers:
            thread.start()
        try:
            poll(lambda: any(pid != first_pid for pid in seen), timeout=60)
        finally:
            stop.set()
            for thread in callers:
                thread.join()
        del deployment_id
        return min(t for pid, t in seen.items() if pid != first_pid) - started

    def promotion_reach(self, runs: int) -> list[float]:
        awake = {"min_replica": 1, "max_replica": 1}
        pair = [
            self.push_production("promo", **awake),
            self.push_production("promo", target=ds.PUSH_TARGET_PUBLISHED, **awake),
        ]
        poll(lambda: self.state(pair[1]).state == r.DEPLOYMENT_STATE_ACTIVE)
        times = []
        for run_ in range(runs):
            target = pair[(run_ + 1) % 2]
            answer = self.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=target))
            assert answer.completed
            started = time.perf_counter()
            request = inf.PredictRequest(target=inf.Target(model_id="promo"), payload=b"{}")
            poll(lambda r=request, t=target: self.inference.Predict(r, timeout=10).deployment_id == t, interval=0)
            times.append(time.perf_counter() - started)
        return times


def run(
    work: pathlib.Path, fork: bool, runs: int, extras: bool, runtime_flags: tuple[str, ...] = ()
) -> tuple[list[float], float | None, list[float]]:
    """Cold starts, and with `extras` the load step and the promotion reach."""
    flags = ["--autoscaling-time-scale", TIME_SCALE, "--wake-hold-seconds", "1", *runtime_flags] + (
        [] if fork else ["--no-fork-replicas"]
    )
    platform = Platform.start(work, *flags)
    bench = Bench(platform, work)
    try:
        if not extras:
            return bench.cold_starts(runs), None, []
        return bench.cold_starts(runs), bench.scale_up(), bench.promotion_reach(20)
    finally:
        bench.close()
        platform.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray runtime's cold starts")
    args = parser.parse_args()
    print("# Cold start, scale-up and promotion reach\n")
    print("\n".join(machine_info()))
    print("- controller, gateway, replicas and this client share the machine; echo-like model, loopback only\n")
    rows = []
    step, reach = None, []
    for fork in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            times, measured_step, measured_reach = run(pathlib.Path(tmp), fork, args.runs, extras=fork)
            if fork:
                step, reach = measured_step, measured_reach
        ms_ = [t * 1000 for t in times]
        label = "forked from the fork server (default)" if fork else "new interpreter (--no-fork-replicas)"
        rows.append(f"| {label} | {len(ms_)} | {percentile(ms_, 0.5):.0f} | {max(ms_):.0f} |")
    if not args.no_ray:
        rows.append(ray_row(args.runs))
    print("| cold start: request to a scaled-to-zero deployment, until its answer | runs | p50 ms | max ms |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    if step is not None:
        print(
            f"\nLoad step 1 -> 4 concurrent callers (1 replica serving, max 4): a new replica answered after "
            f"{step * 1000:.0f} ms"
        )
    if reach:
        reach_ms = [t * 1000 for t in reach]
        print(
            f"\nPromotion reach (PromoteDeployment answered -> gateway process serves the new production by model "
            f"ID), {len(reach_ms)} promotions: p50 {percentile(reach_ms, 0.5):.1f} ms, max {max(reach_ms):.1f} ms "
            "(includes one gateway round trip per poll)"
        )


def ray_row(runs: int) -> str:
    """Cold starts with replicas placed on a local two-node Ray cluster (loopback)."""
    import os

    # Keep Ray on loopback (see tests/test_ray_runtime.py); set before Ray is imported.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage reports off this machine
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        return "| Ray runtime: skipped (pip install 'slipway[ray]') | 0 | - | - |"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 4, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=4, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory() as tmp:
            times, _, _ = run(
                pathlib.Path(tmp),
                True,
                runs,
                extras=False,
                runtime_flags=("--runtime", "ray", "--ray-address", cluster.address),
            )
    finally:
        cluster.shutdown()
    ms_ = [t * 1000 for t in times]
    return f"| Ray runtime (--runtime ray, 2-node local cluster): actor + replica process | {len(ms_)} | {percentile(ms_, 0.5):.0f} | {max(ms_):.0f} |"


if __name__ == "__main__":
    main()
