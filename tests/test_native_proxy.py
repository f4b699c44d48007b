"""The native data plane's HAProxy (gateway/native/) with a route table given by hand: a real
haproxy, real HTTP and gRPC servers standing as replicas and as the Python gateway behind it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping

import aiohttp
import grpc
import pytest
from aiohttp import web
from conftest import wait_until

from gateway import traffic_split
from gateway.forwarder import LoadMeter
from gateway.native.config import ProxyConfig
from gateway.native.proxy import NativeDataPlane, find_haproxy
from gateway.routing import RouteIndex
from slipway import data_plane
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import key_service_pb2 as ks
from slipway.v1 import resources_pb2 as r
from slipway.v1 import route_service_pb2 as rt

pytestmark = pytest.mark.skipif(find_haproxy() is None, reason="haproxy is not installed (make haproxy-bin)")
PREDICT = "/slipway.v1.InferenceService/Predict"
KEY = "sk_k1_secret"
LIMITED = "sk_k2_secret"


async def http_server(name: str) -> tuple[web.AppRunner, int]:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "by": name,
                "path": request.path,
                "token": request.headers.get("x-slipway-replica-token", ""),
                "request_id": request.headers.get("x-request-id", ""),
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def grpc_server(name: str) -> tuple[grpc.aio.Server, int]:
    async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata() or ())
        return inf.PredictResponse(
            deployment_id=name, payload=json.dumps({"token": metadata.get("x-slipway-replica-token", "")}).encode()
        ).SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "slipway.v1.InferenceService", {"Predict": grpc.unary_unary_rpc_method_handler(predict)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


class World:
    """Replicas a1, a2 (deployment A), b1 (B), the Python stand-in, and the route table."""

    def __init__(self) -> None:
        self.http: dict[str, int] = {}
        self.grpc: dict[str, int] = {}
        self.closers: list = []
        self.stoppers: dict[str, tuple] = {}
        self.loads: defaultdict[str, LoadMeter] = defaultdict(LoadMeter)
        self.index = RouteIndex()
        self.keys: list[rt.ApiKeyRoute] = []
        self.weights = {"A": 100}
        self.replicas = {"A": ["a1", "a2"], "B": ["b1"]}
        self.version = 0

    async def start(self, require_keys: bool) -> None:
        for name in ("a1", "a2", "b1", "python"):
            runner, self.http[name] = await http_server(name)
            server, self.grpc[name] = await grpc_server(name)
            self.stoppers[name] = (runner.cleanup, lambda server=server: server.stop(0))
            self.closers += self.stoppers[name]
        base = ProxyConfig(
            "", "", "", "", "", 4, 1000, require_keys, 30, 5, 5, 30, 60, 100, 100, connect_timeout_seconds=0.5
        )
        self.proxy = NativeDataPlane(base, lambda: self.index, self.loads, find_haproxy() or "", "127.0.0.1", 0, 0, 1)
        await self.proxy.start(self.grpc["python"], self.http["python"])
        await self.publish()

    async def publish(self) -> None:
        """A full table (reset) from the world's state, applied to haproxy."""
        self.version += 1
        deployments = [
            rt.DeploymentRoute(
                deployment_id=d,
                model_id="M",
                active=True,
                state=r.DEPLOYMENT_STATE_ACTIVE,
                endpoints=[
                    rt.Endpoint(
                        replica_id=n,
                        address=f"127.0.0.1:{self.grpc[n]}",
                        http_address=f"127.0.0.1:{self.http[n]}",
                        token=f"tok-{n}",
                    )
                    for n in names
                ],
            )
            for d, names in self.replicas.items()
        ]
        production = [rt.WeightedDeployment(deployment_id=d, weight=w) for d, w in self.weights.items()]
        model = rt.ModelRoute(
            model_id="M",
            model_name="m",
            production_deployment_id="A",
            environments=[rt.EnvironmentRoute(name="production", deployments=production)],
        )
        self.index.apply(
            rt.WatchRoutesResponse(
                version=self.version, reset=True, models=[model], deployments=deployments, api_keys=self.keys
            )
        )
        await self.proxy.apply()

    async def post(self, path: str, headers: dict | None = None, body: bytes = b"{}") -> tuple[dict, Mapping[str, str]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{self.proxy.http_port}{path}", data=body, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json(), response.headers.copy()

    async def close(self) -> None:
        if hasattr(self, "proxy"):
            await self.proxy.stop()
        for close in self.closers:
            await close()


@pytest.fixture
async def world(request):
    world = World()
    try:
        await world.start(require_keys=getattr(request, "param", False))
        yield world
    finally:
        await world.close()


def key_route(key_id: str, key: str, **fields) -> rt.ApiKeyRoute:
    return rt.ApiKeyRoute(key_id=key_id, key_sha256=hashlib.sha256(key.encode()).digest(), **fields)


async def test_every_route_alias_goes_straight_to_a_replica_with_its_token(world: World):
    for path in (
        "/model/M/production/predict",
        "/model/m/production/predict",
        "/model/m/environments/production/predict",
        "/model/M/deployment/A/predict",
        "/model/m/deployment/B/predict",
    ):
        body, headers = await world.post(path, {"X-Request-Id": "caller-1"})
        assert body["by"] in (("b1",) if "/B/" in path else ("a1", "a2")), path
        assert body["path"] == data_plane.REPLICA_PREDICT_PATH
        assert body["token"] == f"tok-{body['by']}"
        assert body["request_id"] == "caller-1" and headers["x-slipway-request-id"] == "caller-1"
        assert not any("tok-" in value for value in headers.values())


async def test_everything_else_goes_to_python(world: World):
    for path in ("/model/nope/production/predict", "/model/m/development/predict", "/model/m/deployment/X/predict"):
        body, headers = await world.post(path, {"X-Request-Id": "bad id with spaces"})
        assert body["by"] == "python", path
        assert body["request_id"].startswith("req-") and headers["x-slipway-request-id"] == body["request_id"]
    # Larger than max_request_bytes (1000), or chunked: Python answers as it does alone.
    assert (await world.post("/model/m/production/predict", body=b"x" * 1001))[0]["by"] == "python"

    async def chunks():
        yield b"{}"

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{world.proxy.http_port}/model/m/production/predict", data=chunks()) as response,
    ):
        assert (await response.json())["by"] == "python"
    # A forged replica token never reaches a replica.
    body, _ = await world.post("/model/m/production/predict", {"x-slipway-replica-token": "forged"})
    assert body["token"] == f"tok-{body['by']}"


async def test_a_weighted_split_picks_as_python_does(world: World):
    world.weights = {"B": 30, "A": 70}  # the candidate listed first
    await world.publish()
    candidates = [rt.WeightedDeployment(deployment_id=d, weight=w) for d, w in world.weights.items()]
    for _ in range(40):
        request_id = uuid.uuid4().hex
        body, _ = await world.post("/model/m/production/predict", {"X-Request-Id": request_id})
        expected = traffic_split.choose(candidates, request_id)
        assert ("B" if body["by"] == "b1" else "A") == expected


async def test_a_removed_replica_gets_nothing_once_the_table_is_applied(world: World):
    world.replicas["A"] = ["a2"]
    await world.publish()
    for _ in range(20):
        assert (await world.post("/model/m/deployment/A/predict"))[0]["by"] == "a2"
    await wait_until(lambda: not world.proxy.retiring, timeout=5, what="the retired servers to be deleted")
    world.replicas["A"] = []  # no ready replica: Python (the activator) takes the requests
    await world.publish()
    assert (await world.post("/model/m/production/predict"))[0]["by"] == "python"
    world.replicas["A"] = ["a1"]  # woken: back on the fast path
    await world.publish()
    assert (await world.post("/model/m/production/predict"))[0]["by"] == "a1"


@pytest.mark.parametrize("world", [True], indirect=True)
async def test_keys_are_checked_in_the_proxy_and_a_revocation_applies_at_once(world: World):
    world.keys = [
        key_route("k1", KEY, scope=ks.KEY_SCOPE_INFERENCE),
        key_route("k2", LIMITED, scope=ks.KEY_SCOPE_INFERENCE, model_ids=["OTHER"]),
        key_route("k3", "sk_k3_secret", scope=ks.KEY_SCOPE_METRICS),
        key_route("k4", "sk_k4_secret", scope=ks.KEY_SCOPE_ADMIN, expire_time=time.time() + 0.5),
    ]
    await world.publish()
    path = "/model/m/production/predict"
    assert (await world.post(path, {"Authorization": f"Api-Key {KEY}"}))[0]["by"] != "python"
    assert (await world.post(path, {"Authorization": f"bearer  {KEY}"}))[0]["by"] != "python"
    for refused in (None, KEY, f"Api-Key {LIMITED}", "Api-Key sk_k3_secret", "Api-Key sk_unknown_x"):
        headers = {} if refused is None else {"Authorization": refused}
        assert (await world.post(path, headers))[0]["by"] == "python", refused
    assert (await world.post(path, {"Authorization": "Api-Key sk_k4_secret"}))[0]["by"] != "python"

    async def expired() -> bool:
        return (await world.post(path, {"Authorization": "Api-Key sk_k4_secret"}))[0]["by"] == "python"

    await wait_until(expired, timeout=5, what="the expired key to leave the proxy's map")
    world.keys[0] = key_route("k1", KEY, scope=ks.KEY_SCOPE_INFERENCE, revoked=True)
    await world.publish()
    assert (await world.post(path, {"Authorization": f"Api-Key {KEY}"}))[0]["by"] == "python"


async def test_a_grpc_call_with_routing_metadata_reaches_a_replica_and_counts_in_its_load(world: World):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{world.proxy.grpc_port}") as channel:
        predict = channel.unary_unary(PREDICT, response_deserializer=inf.PredictResponse.FromString)
        request = inf.PredictRequest(payload=b"{}").SerializeToString()
        for metadata, expected in (
            (((data_plane.MODEL_HEADER, "m"),), {"a1", "a2"}),
            (((data_plane.MODEL_HEADER, "M"), (data_plane.ENVIRONMENT_HEADER, "production")), {"a1", "a2"}),
            (((data_plane.DEPLOYMENT_HEADER, "B"),), {"b1"}),
            ((), {"python"}),
            (((data_plane.MODEL_HEADER, "unknown"),), {"python"}),
        ):
            answer = await predict(request, metadata=metadata, timeout=5)
            assert answer.deployment_id in expected, metadata
            if answer.deployment_id != "python":
                assert json.loads(answer.payload)["token"] == f"tok-{answer.deployment_id}"
    await wait_until(lambda: world.loads["A"].native_requests >= 2, timeout=5, what="haproxy's sessions in the load")
    assert world.loads["B"].native_requests >= 1


async def grpc_answers(world: World, metadata: tuple, count: int) -> list[inf.PredictResponse]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{world.proxy.grpc_port}") as channel:
        predict = channel.unary_unary(PREDICT, response_deserializer=inf.PredictResponse.FromString)
        request = inf.PredictRequest(payload=b"{}").SerializeToString()
        return [await predict(request, metadata=metadata, timeout=5) for _ in range(count)]


async def test_a_grpc_seat_freed_by_a_replica_serves_the_next_one_with_its_token(world: World):
    by_a = ((data_plane.DEPLOYMENT_HEADER, "A"),)
    assert {a.deployment_id for a in await grpc_answers(world, by_a, 10)} <= {"a1", "a2"}
    world.replicas["A"] = ["a2"]
    await world.publish()
    assert {a.deployment_id for a in await grpc_answers(world, by_a, 10)} == {"a2"}
    await wait_until(lambda: not world.proxy.retiring, timeout=5, what="a1's seat to be free")
    world.replicas["A"] = ["a2", "b1"]  # b1 takes a1's seat: another address, another token
    await world.publish()
    answers = await grpc_answers(world, by_a, 20)
    assert all(json.loads(a.payload)["token"] == f"tok-{a.deployment_id}" for a in answers)
    assert {a.deployment_id for a in answers} <= {"a2", "b1"}
    assert world.proxy.state.seats["g" + str(world.proxy.slots.owner["A"])]["tok-b1"] in (0, 1)


async def test_haproxys_own_errors_keep_the_gateways_shapes(world: World):
    for stop in world.stoppers["b1"]:
        await stop()  # B's only replica is gone before the table says so
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{world.proxy.http_port}/model/m/deployment/B/predict",
            data=b"{}",
            headers={"X-Request-Id": "gone-1"},
        ) as response,
    ):
        assert response.status == 503 and response.headers["x-slipway-request-id"] == "gone-1"
        assert (await response.json())["error"]["code"] == "UNAVAILABLE"
    # A gRPC call its seat cannot take goes to the Python gateway (which routes it again) ...
    (answer,) = await grpc_answers(world, ((data_plane.DEPLOYMENT_HEADER, "B"),), 1)
    assert answer.deployment_id == "python"
    await world.stoppers["python"][1]()  # ... and with none there either, HAProxy's own UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await grpc_answers(world, ((data_plane.DEPLOYMENT_HEADER, "B"),), 1)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_connection_past_the_limit_is_refused_as_python_refuses_it(world: World):
    held = [await asyncio.open_connection("127.0.0.1", world.proxy.http_port) for _ in range(100)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", world.proxy.http_port)
        writer.write(b"POST /model/m/production/predict HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if line)
        body = json.loads(await reader.readexactly(int(headers["Content-Length"])))
        assert head.startswith("HTTP/1.1 503") and body["error"]["reason"] == "TOO_MANY_CONNECTIONS"
        assert headers["X-Slipway-Request-Id"].startswith("req-")  # the header names keep their case
        writer.close()
    finally:
        for _, other in held:
            other.close()


async def test_a_haproxy_that_dies_is_started_again_on_the_same_ports(world: World):
    first = world.proxy.process
    first.kill()
    await wait_until(lambda: world.proxy.process is not first, timeout=10, what="a new haproxy")

    async def fast_again() -> bool:
        return (await world.post("/model/m/production/predict"))[0]["by"] in ("a1", "a2")

    await wait_until(fast_again, timeout=5, what="the new haproxy to be given the route table")
