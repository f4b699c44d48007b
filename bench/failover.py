"""Controller failover time: two `slipway controller` processes on one PostgreSQL database
(a local server, tests/pg_server.py) and one data directory, a production deployment with
a ready replica; SIGKILL the leader and time until the other holds the lease and serves
the same replica process (adopted, not restarted) as READY. Prints p50 and max over runs.

    .venv/bin/python bench/failover.py [--runs 5] [--lease-seconds 5] [--lease-renew-seconds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench.common import free_port, machine_info, percentile, wait_reachable  # noqa: E402
from controller.store import open_store  # noqa: E402
from slipway.packaging import archive_package  # noqa: E402
from slipway.v1 import deployment_service_pb2 as ds  # noqa: E402
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc  # noqa: E402
from slipway.v1 import resources_pb2 as r  # noqa: E402
from tests.pg_server import PostgresServer, Unavailable  # noqa: E402

MODEL = """
class Model:
    def __init__(self, **kwargs):
        pass
    def load(self):
        pass
    def predict(self, model_input):
        return model_input
"""


def controller(
    work: pathlib.Path, database: str, lease: float, renew: float, name: str
) -> tuple[subprocess.Popen, str]:
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "slipway", "controller",
            "--port", address.rsplit(":", 1)[1], "--controller-http-port", "0",
            "--data-dir", str(work / "data"), "--database", database, "--insecure-no-auth",
            "--lease-seconds", str(lease), "--lease-renew-seconds", str(renew),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(work / f"{name}.log", "ab"),
    )  # fmt: skip
    wait_reachable(address, process, f"controller {name}")
    return process, address


async def leader_pid(database: str) -> int | None:
    store = await open_store(database)
    try:
        async with store.write() as tx:
            holder = (await tx._lease_row())[0]  # type: ignore[attr-defined]
    finally:
        await store.close()
    return int(holder.split(":")[1]) if holder else None


async def ready_pids(stub: ds_grpc.DeploymentServiceStub, deployment_id: str) -> list[int]:
    try:
        found = await stub.GetDeployment(ds.GetDeploymentRequest(deployment_id=deployment_id), timeout=2)
    except grpc.aio.AioRpcError:
        return []
    return sorted(rep.pid for rep in found.deployment.replicas if rep.state == r.REPLICA_STATE_READY)


async def until(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.02)
    raise RuntimeError("timed out")


async def one_run(server: PostgresServer, number: int, lease: float, renew: float) -> tuple[float, float]:
    """(seconds until the second holds the lease, seconds until it serves the adopted replica)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="slipway-failover-"))
    database = server.create_database(f"failover_{number}")
    processes: list[subprocess.Popen] = []
    try:
        first, first_address = controller(work, database, lease, renew, "a")
        processes.append(first)
        await until(lambda: leader_pid(database))
        second, second_address = controller(work, database, lease, renew, "b")
        processes.append(second)
        package = work / "package"
        package.mkdir()
        (package / "config.yaml").write_text("model_name: failover\nrequirements: []\n")
        (package / "model").mkdir()
        (package / "model" / "model.py").write_text(MODEL)
        archive, digest = archive_package(package)
        async with grpc.aio.insecure_channel(first_address) as a, grpc.aio.insecure_channel(second_address) as b:
            on_a, on_b = ds_grpc.DeploymentServiceStub(a), ds_grpc.DeploymentServiceStub(b)
            pushed = await on_a.CreateDeployment(
                ds.CreateDeploymentRequest(
                    package_archive=archive, package_sha256=digest, target=ds.PUSH_TARGET_PRODUCTION
                )
            )
            before = await until(lambda: ready_pids(on_a, pushed.deployment.id))
            killed = time.monotonic()
            first.send_signal(signal.SIGKILL)
            first.wait(10)

            async def second_leads() -> bool:
                return await leader_pid(database) == second.pid

            await until(second_leads)
            leading = time.monotonic() - killed
            adopted = await until(lambda: ready_pids(on_b, pushed.deployment.id))
            serving = time.monotonic() - killed
            if adopted != before:
                raise RuntimeError(f"replica restarted, not adopted: {before} -> {adopted}")
        return leading, serving
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lease-seconds", type=float, default=5.0)
    parser.add_argument("--lease-renew-seconds", type=float, default=1.0)
    args = parser.parse_args()
    try:
        server = PostgresServer.start()
    except Unavailable as exc:
        sys.exit(f"no PostgreSQL to run against: {exc}")
    try:
        runs = [asyncio.run(one_run(server, n, args.lease_seconds, args.lease_renew_seconds)) for n in range(args.runs)]
    finally:
        server.stop()
    leading, serving = [run[0] for run in runs], [run[1] for run in runs]
    print("\n".join(machine_info()))
    print(f"- lease {args.lease_seconds} s, renewed every {args.lease_renew_seconds} s; {args.runs} runs")
    print(f"- new leader after SIGKILL: p50 {percentile(leading, 0.5):.2f} s, max {max(leading):.2f} s")
    print(
        f"- adopted replica listed READY by the new leader: p50 {percentile(serving, 0.5):.2f} s, "
        f"max {max(serving):.2f} s"
    )


if __name__ == "__main__":
    main()
