"""Automatic rollback and RollbackEnvironment with the platform's defaults: `slipway
controller` and `slipway gateway` as processes (load reports every second), a production
deployment under a steady HTTP request stream, and a rolling promotion (10/50/100 %) of a
candidate that fails a share of its requests (examples/flaky). Prints, per run, how many
requests the candidate failed before the automatic rollback, whether any failed after the
gateway routed back, and how long RollbackEnvironment took to reach the gateway's answers.
Asserts nothing.

    .venv/bin/python bench/rollout.py [--runs 3] [--failure-rate 0.3] [--min-requests 100] [--callers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import shutil
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
from google.protobuf import field_mask_pb2  # noqa: E402

from bench.common import Platform, machine_info, percentile  # noqa: E402
from slipway.packaging import archive_package  # noqa: E402
from slipway.v1 import deployment_service_pb2 as ds  # noqa: E402
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc  # noqa: E402
from slipway.v1 import model_service_pb2 as ms  # noqa: E402
from slipway.v1 import model_service_pb2_grpc as ms_grpc  # noqa: E402
from slipway.v1 import rollout_service_pb2 as ro  # noqa: E402
from slipway.v1 import rollout_service_pb2_grpc as ro_grpc  # noqa: E402


def package(work: pathlib.Path, name: str, tag: str, failure_rate: float) -> pathlib.Path:
    directory = work / f"pkg-{tag}"
    shutil.copytree(REPO / "examples" / "flaky", directory)
    config = (directory / "config.yaml").read_text()
    config = config.replace("model_name: flaky", f"model_name: {name}")
    config = config.replace('FAILURE_RATE: "0.3"', f'FAILURE_RATE: "{failure_rate}"').replace(
        'TAG: "flaky"', f'TAG: "{tag}"'
    )
    (directory / "config.yaml").write_text(config)
    return directory


async def until(check, timeout: float = 120.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


async def run_once(platform: Platform, work: pathlib.Path, run: int, args) -> tuple[int, int, int, float]:
    name = f"bench-{run}"
    async with grpc.aio.insecure_channel(platform.controller_address) as channel, aiohttp.ClientSession() as http:
        deployments = ds_grpc.DeploymentServiceStub(channel)
        models = ms_grpc.ModelServiceStub(channel)
        rollouts = ro_grpc.RolloutServiceStub(channel)

        async def push(tag: str, failure_rate: float) -> ds.CreateDeploymentResponse:
            archive, digest = archive_package(package(work / name, name, tag, failure_rate))
            return await deployments.CreateDeployment(
                ds.CreateDeploymentRequest(
                    package_archive=archive, package_sha256=digest, target=ds.PUSH_TARGET_PRODUCTION
                )
            )

        async def production() -> str:
            return (await models.GetModel(ms.GetModelRequest(model_id=name))).model.production_deployment_id

        first = await push("good", 0.0)
        await until(lambda: _equal(production(), first.deployment.id), what="the first production")
        steps = [ro.RolloutStep(percent=p, hold_seconds=30) for p in (10, 50, 100)]
        policy = ro.RolloutPolicy(
            model_id=name, mode=ro.ROLLOUT_MODE_ROLLING, steps=steps, min_requests=args.min_requests
        )
        mask = field_mask_pb2.FieldMask(paths=["mode", "steps", "min_requests"])
        await rollouts.UpdateRolloutPolicy(ro.UpdateRolloutPolicyRequest(policy=policy, update_mask=mask))

        answers: list[tuple[float, str | None]] = []
        stop = asyncio.Event()
        url = f"{platform.http_base}/model/{name}/production/predict"

        async def caller() -> None:
            while not stop.is_set():
                started = time.monotonic()
                headers = {"Content-Type": "application/json", "X-Request-Id": uuid.uuid4().hex}
                try:
                    async with http.post(url, data=b'"hi"', headers=headers) as response:
                        body = await response.read()
                        answers.append((started, json.loads(body)["tag"] if response.status == 200 else None))
                except aiohttp.ClientError:
                    answers.append((started, None))

        async def served_good_since(moment: float, count: int) -> bool:
            return sum(1 for s, tag in answers if s >= moment and tag == "good") >= count

        callers = [asyncio.create_task(caller()) for _ in range(args.callers)]
        await until(lambda: served_good_since(0, 50), what="the stream to start")
        bad = await push("bad", args.failure_rate)

        async def rolled_back():
            try:
                rollout = (await rollouts.GetRollout(ro.GetRolloutRequest(model_id=name))).rollout
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:  # not started yet
                    return None
                raise
            return rollout if rollout.state == ro.ROLLOUT_STATE_ROLLED_BACK else None

        rollout = await until(rolled_back, what="the automatic rollback")
        decided = time.monotonic()
        await until(lambda: served_good_since(decided, 200), what="answers after the rollback")
        # Failed requests sent once the gateway had had a report interval to apply the table.
        after = sum(1 for s, tag in answers if s >= decided + 1.0 and tag is None)
        failed = sum(1 for _, tag in answers if tag is None)
        print(f"  run {run}: {rollout.message.split(';')[0]}")

        # RollbackEnvironment after an immediate promotion: time until the answers come from the previous one.
        immediate = ro.RolloutPolicy(model_id=name, mode=ro.ROLLOUT_MODE_IMMEDIATE)
        await rollouts.UpdateRolloutPolicy(
            ro.UpdateRolloutPolicyRequest(policy=immediate, update_mask=field_mask_pb2.FieldMask(paths=["mode"]))
        )
        fixed = await push("fixed", 0.0)
        await until(lambda: _equal(production(), fixed.deployment.id), what="the fixed production")
        await until(lambda: _last_is(answers, "fixed"), what="traffic on the fixed deployment")
        asked = time.monotonic()
        await rollouts.RollbackEnvironment(ro.RollbackEnvironmentRequest(model_id=name))
        await until(lambda: served_good_since(asked, 1), what="answers from the previous deployment")
        first_good = min(s for s, tag in answers if s >= asked and tag == "good")
        stop.set()
        await asyncio.gather(*callers)
        del bad
        return failed, after, len(answers), first_good - asked


async def _equal(value, expected) -> bool:
    return (await value) == expected


async def _last_is(answers: list[tuple[float, str | None]], tag: str) -> bool:
    return bool(answers) and answers[-1][1] == tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--failure-rate", type=float, default=0.3)
    parser.add_argument("--min-requests", type=int, default=100)
    parser.add_argument("--callers", type=int, default=4)
    args = parser.parse_args()
    print("\n".join(machine_info()))
    work = pathlib.Path(tempfile.mkdtemp(prefix="slipway-bench-rollout-"))
    platform = Platform.start(work)
    try:
        results = [asyncio.run(run_once(platform, work, run, args)) for run in range(1, args.runs + 1)]
    finally:
        platform.stop()
        shutil.rmtree(work, ignore_errors=True)
    failed = [r[0] for r in results]
    print(
        f"automatic rollback (candidate failing {args.failure_rate:.0%}, min_requests {args.min_requests}, "
        f"{args.callers} callers): failed requests per run {failed} of {[r[2] for r in results]} "
        f"(max {max(failed)}); failed after the rollback reached the gateway: {[r[1] for r in results]}"
    )
    repoint = [r[3] * 1000 for r in results]
    print(
        f"RollbackEnvironment to the first answer from the previous deployment: p50 "
        f"{percentile(repoint, 0.5):.0f} ms, max {max(repoint):.0f} ms"
    )


if __name__ == "__main__":
    main()
