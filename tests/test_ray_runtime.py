"""The Ray runtime on a real local Ray cluster of two nodes (ray.cluster_utils.Cluster, on
loopback; the second node declares two GPUs, so a GPU request is placed there), driven through
the controller's public API and the gateway. The controller runs as a subprocess
(`slipway controller --runtime ray`), so that it can be SIGKILLed and restarted; this test
process is a Ray driver too, only to look at the cluster (nodes, actors, their placement,
which it reads through Ray's state API: the head runs Ray's dashboard, its API server).

The test runs as root, and so do the nodes' Ray workers: replicas run as their model's
user (--replica-user auto, the default). The controllers keep a node cache bound of one
byte, so every unpack prunes whatever no running replica uses.

The cluster starts once for the module (Ray takes seconds to start on two cores)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import aiohttp
import grpc
import pytest
from google.protobuf import field_mask_pb2

from controller.ray_runtime import namespace_for
from controller.ray_supervisor import node_root
from slipway.data_plane import REPLICA_PREDICT_PATH
from slipway.internal_auth import REPLICA_TOKEN_HEADER
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r
from tests.conftest import DATA_DIRS, Api, wait_until
from tests.test_restart import free_port, pid_alive

# Ray resolves a loopback address to the machine's outward one unless told to keep to this
# host (the variable's name is Ray's; on Linux it means "single host, loopback"); set before
# Ray is imported, and inherited by the controllers the tests start.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ray's dashboard would try to send usage reports off this machine.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.timeout(300)

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
READY = r.REPLICA_STATE_READY
FIRST_UID = 260_000
STATE_API: list[str] = []  # the cluster's dashboard (Ray's state API server), once it is up
# The Ray workers run as this test's user: only root's change users (else replicas run as the worker's).
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,
            "node_ip_address": "127.0.0.1",
            # Ray's state API (ray.util.state) is served by the dashboard's API server.
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": 0,
        },
    )
    second = cluster.add_node(num_cpus=4, num_gpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    context = ray.init(address=cluster.address, log_to_driver=False)
    # Named explicitly: without it the state API asks the cluster this machine started last
    # (/tmp/ray), which may be another test run's.
    STATE_API.append(f"http://{context.dashboard_url}")
    yield cluster, second
    STATE_API.clear()
    ray.shutdown()
    cluster.shutdown()


class ControllerProcess:
    def __init__(self, data_dir: pathlib.Path, address: str, port: int | None = None) -> None:
        DATA_DIRS.add(data_dir)
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        log = open(data_dir.parent / f"controller-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway",
                "controller",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
                "--insecure-no-auth",
                "--runtime",
                "ray",
                "--ray-address",
                address,
                "--drain-seconds",
                "5",
                "--replica-uid-range",
                f"{FIRST_UID}-{FIRST_UID + 99}",
                "--ray-node-cache-bytes",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    async def ready(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Platform:
    def __init__(self, data_dir: pathlib.Path, api: Api, gateway, inference) -> None:
        self.data_dir = data_dir
        self.api = api
        self.gateway = gateway
        self.inference = inference

    async def predict(self, model_id: str) -> dict:
        """Once the gateway routes the model's production (a deployment turns ACTIVE, and becomes
        production, before the gateway has the table that says so)."""
        await wait_until(lambda: self.routes_production(model_id), 30, f"the gateway to route {model_id}")
        request = inf.PredictRequest(target=inf.Target(model_id=model_id), payload=b'"hi"')
        return json.loads((await self.inference.Predict(request, timeout=30)).payload)

    def routes_production(self, model_id: str) -> bool:
        model = self.gateway.follower.index.models.get(model_id)
        return model is not None and any(e.name == "production" and e.deployments for e in model.environments)

    async def scale(self, deployment_id: str, **settings) -> None:
        deployment = r.Deployment(id=deployment_id)
        for key, value in settings.items():
            setattr(deployment.autoscaling_settings, key, value)
        paths = [f"autoscaling_settings.{k}" for k in settings]
        await self.api.deployments.UpdateDeployment(
            ds.UpdateDeploymentRequest(deployment=deployment, update_mask=field_mask_pb2.FieldMask(paths=paths))
        )

    async def ready_replicas(self, deployment_id: str, count: int, timeout: float = 90.0) -> list[r.Replica]:
        async def check():
            d = await self.api.get(deployment_id)
            ready = [rep for rep in d.replicas if rep.state == READY]
            return ready if d.state == ACTIVE and len(ready) == count and len(d.replicas) == count else None

        return await wait_until(check, timeout, f"{count} ready replicas of {deployment_id}")


def actors(data_dir: pathlib.Path) -> dict[str, dict]:
    """The live actors of a controller's namespace: the replica each holds (its name for an
    idle one of the warm pool) -> its status, and the actor's name."""
    namespace = namespace_for(data_dir)
    found = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != namespace:
            continue
        try:
            status = ray.get(ray.get_actor(entry["name"], namespace=namespace).status.remote(), timeout=30)
        except (ValueError, ray.exceptions.RayError):
            continue  # gone meanwhile
        found[status["replica_id"] or entry["name"]] = {**status, "actor_name": entry["name"]}
    return found


def node_of(data_dir: pathlib.Path, replica_id: str) -> str:
    """The Ray node a replica's actor runs on, as Ray's state API (the GCS's actor table) has it."""
    from ray.util.state import list_actors

    name = actors(data_dir)[replica_id]["actor_name"]
    filters = [("name", "=", name), ("ray_namespace", "=", namespace_for(data_dir)), ("state", "=", "ALIVE")]
    [actor] = list_actors(address=STATE_API[0], filters=filters, raise_on_missing_output=False)
    return actor.node_id


def uid_of(pid: int) -> int:
    """The real uid of a process (the nodes are on this machine)."""
    fields = dict(line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[0])


def actor_names(data_dir: pathlib.Path) -> set[str]:
    """The replicas the namespace's actors hold (idle pool actors left out)."""
    return {name for name, status in actors(data_dir).items() if status["replica_id"]}


async def start_platform(data_dir: pathlib.Path, address: str, tmp_path: pathlib.Path):
    from gateway.server import Gateway, GatewaySettings

    controller = ControllerProcess(data_dir, address)
    await controller.ready()
    gateway = await Gateway.start(
        GatewaySettings(
            controller_address=controller.address,
            internal_token=(data_dir / "internal.token").read_text().strip(),
            grpc_port=0,
            http_port=0,
            replica_wait_seconds=30,
            load_report_seconds=0.2,
            shutdown_grace_seconds=2,
            require_api_keys=False,
        )
    )
    await asyncio.wait_for(gateway.follower.synced.wait(), 20)
    return controller, gateway


@pytest.fixture
async def platform(cluster, tmp_path):
    data_dir = tmp_path / "data"
    controller, gateway = await start_platform(data_dir, cluster[0].address, tmp_path)
    try:
        async with (
            grpc.aio.insecure_channel(controller.address) as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as gw,
        ):
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            yield Platform(data_dir, api, gateway, inf_grpc.InferenceServiceStub(gw))
    finally:
        await gateway.stop()
        controller.stop()
    assert actors(data_dir) == {}, "a stopped controller left actors on the cluster"
    shutil.rmtree(node_root(namespace_for(data_dir)), ignore_errors=True)


async def test_push_predict_gpu_placement_and_unplaceable(platform: Platform, cluster):
    _, second = cluster
    pushed = await platform.api.push(platform.api.package("echo"), target=ds.PUSH_TARGET_PRODUCTION)
    running = await platform.api.wait_state(pushed.deployment.id, ACTIVE, timeout=90)
    assert (await platform.predict(pushed.deployment.model_id))["input"] == "hi"
    # The replica serves its own HTTP predict route on its node (the native data plane's).
    [entry] = platform.gateway.follower.index.deployments[pushed.deployment.id].endpoints
    assert entry.http_address.rpartition(":")[0] == entry.address.rpartition(":")[0]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{entry.http_address}{REPLICA_PREDICT_PATH}",
            data=b'"hi"',
            headers={REPLICA_TOKEN_HEADER: entry.token, "Content-Type": "application/json"},
        ) as response,
    ):
        answer = await response.json()
        assert answer["input"] == "hi", answer
    # The replica's log, written on its node, is followed on the controller's machine.
    log = platform.data_dir / "logs" / f"{running.replicas[0].id}.log"
    await wait_until(lambda: log.exists() and b"model_loaded" in log.read_bytes(), 30, "the replica's log")

    gpu = await platform.api.push(
        platform.api.package("gpu", extra_config="resources:\n  use_gpu: true\n  cpu: 500m\n"),
        target=ds.PUSH_TARGET_PRODUCTION,
    )
    [replica] = await platform.ready_replicas(gpu.deployment.id, 1)
    assert node_of(platform.data_dir, replica.id) == second.node_id, "the GPU replica is not on the GPU node"
    assert (await platform.predict(gpu.deployment.model_id))["input"] == "hi"
    # Each model's replicas run as the model's own user (models 1 and 2), as on the local runtime.
    expected = [FIRST_UID, FIRST_UID + 1] if ROOT else [os.geteuid()] * 2
    assert [uid_of(running.replicas[0].pid), uid_of(replica.pid)] == expected

    huge = await platform.api.push(
        platform.api.package("huge", extra_config="resources:\n  cpu: '64'\n"), target=ds.PUSH_TARGET_PRODUCTION
    )

    async def refused():
        d = await platform.api.get(huge.deployment.id)
        return d if "no node of the Ray cluster can hold" in d.status_message else None

    failed = await wait_until(refused, 60, "the unplaceable deployment's status message")
    assert "64 CPU" in failed.status_message


SLUGIFY_MODEL = """
import sys

from slugify import slugify


class Model:
    def load(self):
        pass

    def predict(self, model_input):
        return {"slug": slugify(model_input), "prefix": sys.prefix}
"""
# A requirement the test environment does not have (as in tests/test_builds.py: uv's cache keeps it fast).
ON_GPU_NODE_WITH_REQUIREMENT = "requirements: [python-slugify>=8]\nresources:\n  use_gpu: true\n  cpu: 500m\n"


async def test_a_built_environment_is_shipped_to_the_node_once(platform: Platform, cluster):
    _, second = cluster
    pushed = await platform.api.push(
        platform.api.package("slugger", source=SLUGIFY_MODEL, extra_config=ON_GPU_NODE_WITH_REQUIREMENT),
        target=ds.PUSH_TARGET_PRODUCTION,
    )
    [first] = await platform.ready_replicas(pushed.deployment.id, 1, timeout=240)
    assert node_of(platform.data_dir, first.id) == second.node_id
    request = inf.PredictRequest(target=inf.Target(model_id=pushed.deployment.model_id), payload=b'"Hello World"')
    answer = json.loads((await platform.inference.Predict(request, timeout=30)).payload)
    assert answer["slug"] == "hello-world"  # the requirement, imported on node 2
    # The node's own copy of the environment, not the controller's build directory.
    prefix = pathlib.Path(answer["prefix"])
    assert prefix.parent.name == "envs" and prefix.parent.parent.name == namespace_for(platform.data_dir), prefix
    assert (platform.data_dir / "builds" / "envs" / prefix.name).is_dir()  # the same environment key

    def log_of(replica_id: str) -> str:
        path = platform.data_dir / "logs" / f"{replica_id}.log"
        return path.read_text() if path.exists() else ""

    await wait_until(lambda: "unpacked on this node" in log_of(first.id), 30, "the first replica's unpack line")
    await platform.scale(pushed.deployment.id, min_replica=2, max_replica=2)
    replicas = await platform.ready_replicas(pushed.deployment.id, 2, timeout=90)
    [again] = [rep for rep in replicas if rep.id != first.id]
    assert node_of(platform.data_dir, again.id) == second.node_id
    await wait_until(lambda: "reused: already on this node" in log_of(again.id), 30, "the second replica's reuse line")
    assert "unpacked on this node" not in log_of(again.id)


async def stream(platform: Platform, model_id: str, stop: asyncio.Event, answers: list, failures: list) -> None:
    """A steady, bounded request stream: two callers back to back."""

    async def caller():
        while not stop.is_set():
            try:
                answers.append(await platform.predict(model_id))
            except grpc.aio.AioRpcError as error:
                failures.append(error)

    await asyncio.gather(caller(), caller())


async def test_spread_promotion_and_scale_down_without_a_failed_request(platform: Platform, cluster):
    first = await platform.api.push(platform.api.package("spread", tag="v1"), target=ds.PUSH_TARGET_PRODUCTION)
    await platform.api.wait_state(first.deployment.id, ACTIVE, timeout=90)
    await platform.scale(first.deployment.id, min_replica=3, max_replica=3)
    replicas = await platform.ready_replicas(first.deployment.id, 3)
    nodes = {node_of(platform.data_dir, rep.id) for rep in replicas}
    assert nodes == {n.node_id for n in (cluster[0].head_node, cluster[1])}, "3 replicas not spread over both nodes"

    stop, answers, failures = asyncio.Event(), [], []
    load = asyncio.create_task(stream(platform, first.deployment.model_id, stop, answers, failures))
    try:
        second = await platform.api.push(platform.api.package("spread", tag="v2"), target=ds.PUSH_TARGET_PRODUCTION)
        await platform.api.wait_production(first.deployment.model_id, second.deployment.id, timeout=120)
        await wait_until(lambda: answers and answers[-1]["tag"] == "v2", 60, "answers from the new deployment")
        await platform.scale(second.deployment.id, min_replica=1, max_replica=1)
        await platform.ready_replicas(second.deployment.id, 1)
        seen = len(answers)
        await wait_until(lambda: len(answers) > seen + 20, 60, "requests after the scale-down")
    finally:
        stop.set()
        await load
    assert failures == [], f"{len(failures)} failed requests: {failures[:3]}"
    assert {a["tag"] for a in answers} == {"v1", "v2"}

    # The node cache (bound: 1 byte) keeps what running replicas use, and prunes v1 once its
    # replicas are gone and another package is unpacked: the package and the user's copy.
    cache = node_root(namespace_for(platform.data_dir))
    v1, v2 = first.deployment.package_digest, second.deployment.package_digest
    user_copy = cache / "sandboxes" / str(FIRST_UID) / v1
    assert (cache / "packages" / v1).is_dir() and user_copy.is_dir() == ROOT
    await platform.api.deployments.DeactivateDeployment(
        ds.DeactivateDeploymentRequest(deployment_id=first.deployment.id)
    )
    v1_replicas = {rep.id for rep in replicas}
    await wait_until(lambda: not v1_replicas & actor_names(platform.data_dir), 60, "v1's replicas gone")
    third = await platform.api.push(platform.api.package("spread", tag="v3"))
    await platform.api.wait_state(third.deployment.id, ACTIVE, timeout=60)
    assert not (cache / "packages" / v1).exists() and not user_copy.exists(), "v1 not pruned"
    for kept in (v2, third.deployment.package_digest):
        assert (cache / "packages" / kept).is_dir(), "a running replica's package was pruned"


async def test_a_killed_replica_is_replaced_and_a_lost_node_moves_replicas(platform: Platform, cluster):
    # Two CPUs each: not the warm pool's default shape, so each replica gets an actor of its
    # own, placed by Ray's SPREAD strategy over the nodes there are when it starts.
    pushed = await platform.api.push(
        platform.api.package("crashy", extra_config="resources:\n  cpu: '2'\n"), target=ds.PUSH_TARGET_PRODUCTION
    )
    [replica] = await platform.ready_replicas(pushed.deployment.id, 1)
    os.kill(replica.pid, signal.SIGKILL)

    async def replaced():
        d = await platform.api.get(pushed.deployment.id)
        ready = [rep for rep in d.replicas if rep.state == READY]
        return ready if ready and ready[0].id != replica.id else None

    [successor] = await wait_until(replaced, 90, "a replacement replica")
    assert pid_alive(successor.pid) and not pid_alive(replica.pid)
    assert replica.id not in actor_names(platform.data_dir)

    # A third node joins, takes replicas, and is lost: they come back on the others.
    third = cluster[0].add_node(num_cpus=4, node_ip_address="127.0.0.1")
    cluster[0].wait_for_nodes()
    await platform.scale(pushed.deployment.id, min_replica=3, max_replica=3)
    replicas = await platform.ready_replicas(pushed.deployment.id, 3)
    on_third = [rep.id for rep in replicas if node_of(platform.data_dir, rep.id) == third.node_id]
    assert on_third, "SPREAD placed no replica on the third node"
    cluster[0].remove_node(third)
    survivors = {n.node_id for n in (cluster[0].head_node, cluster[1])}

    async def moved():
        d = await platform.api.get(pushed.deployment.id)
        ready = [rep for rep in d.replicas if rep.state == READY]
        if len(ready) != 3 or any(rep.id in on_third for rep in d.replicas):
            return None
        return ready if {node_of(platform.data_dir, rep.id) for rep in ready} <= survivors else None

    await wait_until(moved, 120, "the lost node's replicas back on the other nodes")
    assert (await platform.predict(pushed.deployment.model_id))["input"] == "hi"


async def test_sigkill_and_restart_adopts_replicas_and_live_reload_keeps_the_process(cluster, tmp_path):
    from gateway.server import Gateway  # noqa: F401  (imported by start_platform)

    data_dir = tmp_path / "data"
    controller, gateway = await start_platform(data_dir, cluster[0].address, tmp_path)
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            dev = await api.push(api.package("dev", tag="v1"))
            running = await api.wait_state(dev.deployment.id, ACTIVE, timeout=90)
        await gateway.stop()
        controller.process.send_signal(signal.SIGKILL)
        controller.process.wait(10)
        # A replica nothing owns (its row never written): the restarted controller stops it.
        stray = (
            ray.remote(__import__("controller.ray_supervisor", fromlist=["x"]).ReplicaSupervisor)
            .options(name="rstray0000000", namespace=namespace_for(data_dir), lifetime="detached", num_cpus=0)
            .remote(namespace_for(data_dir), "rstray0000000")
        )
        ray.get(stray.status.remote(), timeout=60)

        controller, gateway = await start_platform(data_dir, cluster[0].address, tmp_path)
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            adopted = await api.wait_state(dev.deployment.id, ACTIVE, timeout=60)
            assert [rep.pid for rep in adopted.replicas] == [rep.pid for rep in running.replicas], "not adopted"
            await wait_until(lambda: "rstray0000000" not in actors(data_dir), 30, "the stray actor gone")
            assert actor_names(data_dir) == {adopted.replicas[0].id}

            patched = await api.deployments.PatchDeployment(
                ds.PatchDeploymentRequest(
                    deployment_id=dev.deployment.id,
                    base_package_digest=adopted.package_digest,
                    patches=[
                        ds.FilePatch(
                            path="model/model.py",
                            content=(api.tmp / "pkg1" / "model" / "model.py").read_bytes().replace(b"v1", b"v2"),
                        )
                    ],
                    request_id="reload-1",
                ),
                timeout=60,
            )
            assert patched.result == ds.PATCH_RESULT_APPLIED_IN_PLACE, patched
            after = await api.get(dev.deployment.id)
            assert [rep.pid for rep in after.replicas] == [rep.pid for rep in running.replicas]
            assert json.loads(await api.predict(after))["tag"] == "v2"
    finally:
        await gateway.stop()
        controller.stop()
    assert actors(data_dir) == {}
    shutil.rmtree(node_root(namespace_for(data_dir)), ignore_errors=True)
