"""The gateway's /metrics after known traffic: exact counts, labels and buckets."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from conftest import Api, routing_metadata, wait_until
from metrics_scrape import Scrape, scrape

from gateway.errors import GatewayError
from gateway.routing import PRODUCTION
from slipway.metrics import REQUEST_BUCKETS
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import inference_service_pb2 as inf
from slipway.v1 import inference_service_pb2_grpc as inf_grpc
from slipway.v1 import resources_pb2 as r

# The documented series after known traffic hold on both data planes (tests/conftest.py).
pytestmark = pytest.mark.both_data_planes

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE
JSON = {"Content-Type": "application/json"}

STREAMING_MODEL = """
class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        yield "a;"
        yield "b"
"""


async def routable(gateway, deployment_id: str) -> None:
    await wait_until(
        lambda: (d := gateway.follower.index.deployments.get(deployment_id)) is not None and d.endpoints,
        what=f"{deployment_id} to have a routed replica",
    )


def _resolves(gateway, model_id: str, deployment_id: str) -> bool:
    try:
        return gateway.resolve(model_id, "", PRODUCTION).deployment_id == deployment_id
    except GatewayError:
        return False


async def test_counts_labels_buckets_and_a_404_after_known_traffic(api: Api, gateway):
    production = await api.push(api.package("m"), target=ds.PUSH_TARGET_PRODUCTION)
    streaming = await api.push(api.package("m", source=STREAMING_MODEL), target=ds.PUSH_TARGET_PUBLISHED)
    model_id, deployment_id = production.model.id, production.deployment.id
    await api.wait_production(model_id, deployment_id)
    await routable(gateway, deployment_id)
    await routable(gateway, streaming.deployment.id)
    # The controller says production before the gateway's table does: wait for the gateway's.
    await wait_until(
        lambda: _resolves(gateway, model_id, deployment_id), what="the gateway to route the model's production"
    )
    base = f"http://127.0.0.1:{gateway.http_port}"
    async with (
        aiohttp.ClientSession() as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel,
    ):
        for _ in range(3):
            async with session.post(
                f"{base}/model/{model_id}/production/predict", data=b'"hi"', headers=JSON
            ) as response:
                assert response.status == 200, await response.text()
        stub = inf_grpc.InferenceServiceStub(channel)
        target = inf.Target(model_id=model_id)
        for _ in range(2):
            await stub.Predict(
                inf.PredictRequest(target=target, payload=b'"x"'), timeout=10, metadata=routing_metadata(target)
            )
        async with session.post(f"{base}/model/m_nothing/production/predict", data=b'"hi"', headers=JSON) as response:
            assert response.status == 404
        with pytest.raises(grpc.aio.AioRpcError):
            nothing = inf.Target(deployment_id="d_nothing")
            await stub.Predict(inf.PredictRequest(target=nothing), timeout=10, metadata=routing_metadata(nothing))
        path = f"{base}/model/{model_id}/deployment/{streaming.deployment.id}/predict"
        async with session.post(path, data=b'"hi"', headers=JSON) as response:
            assert response.status == 200 and await response.read() == b"a;b"

    metrics = await scrape(f"{base}/metrics")
    labels = {"model_id": model_id, "deployment_id": deployment_id, "environment": "production"}
    requests = "slipway_inference_requests_total"
    assert metrics.value(requests, **labels, protocol="http", status_code="200", grpc_code="") == 3
    assert metrics.value(requests, **labels, protocol="grpc", status_code="", grpc_code="OK") == 2
    unrouted = {"model_id": "", "deployment_id": "", "environment": ""}
    assert metrics.value(requests, **unrouted, protocol="http", status_code="404", grpc_code="") == 1
    assert metrics.value(requests, **unrouted, protocol="grpc", status_code="", grpc_code="NOT_FOUND") == 1
    # Nothing else was counted: no series of the request's own (caller-chosen) names.
    assert sum(metrics.matching(requests).values()) == 3 + 2 + 1 + 1 + 1
    assert not metrics.mentions("m_nothing") and not metrics.mentions("d_nothing")

    http = {**labels, "protocol": "http"}
    assert metrics.value("slipway_inference_duration_seconds_count", **http) == 3
    buckets = metrics.matching("slipway_inference_duration_seconds_bucket", **http)
    bounds = sorted(float(dict(key)["le"]) for key in buckets)
    assert bounds == [*REQUEST_BUCKETS, float("inf")]
    counts = [buckets[frozenset({**http, "le": _le(bound)}.items())] for bound in bounds]
    assert counts == sorted(counts) and counts[-1] == 3
    assert metrics.value("slipway_inference_duration_seconds_sum", **http) > 0

    streamed = {"model_id": model_id, "deployment_id": streaming.deployment.id, "environment": "published"}
    assert metrics.value("slipway_inference_time_to_first_byte_seconds_count", **streamed, protocol="http") == 1
    assert metrics.value("slipway_inference_time_to_first_byte_seconds_count", **http) == 0
    assert metrics.value("slipway_gateway_refusals_total", reason="MODEL_NOT_FOUND") == 1
    assert metrics.value("slipway_gateway_refusals_total", reason="DEPLOYMENT_NOT_FOUND") == 1

    # In flight on the native plane is HAProxy's session count, sampled ten times a second: the
    # last answer's session may still be counted for one sample (the Python plane's is exact).
    async def idle() -> bool:
        return (await scrape(f"{base}/metrics")).value("slipway_inference_in_flight", **labels) == 0

    await wait_until(idle, timeout=5, what="no request in flight")
    assert metrics.value("slipway_wake_queue_depth", **labels) == 0
    assert metrics.value("slipway_inference_retries_total", **labels) == 0

    # A deleted deployment's series leave the gateway's /metrics.
    assert metrics.mentions(streaming.deployment.id)
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=streaming.deployment.id))

    async def forgotten() -> Scrape | None:
        now = await scrape(f"{base}/metrics")
        return None if now.mentions(streaming.deployment.id) else now

    after = await wait_until(forgotten, timeout=10, what="the deleted deployment's series to go")
    assert after.value(requests, **labels, protocol="http", status_code="200", grpc_code="") == 3


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


FAILING_ON_ASK = """
class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        if model_input == "fail":
            raise RuntimeError("asked to fail")
        return model_input
"""


async def test_one_observation_per_request_feeds_prometheus_and_the_load(api: Api, gateway):
    """Each answer is observed once: the load meter (ReportLoad, the chart history) gets the
    same answers, classes and elapsed seconds as the Prometheus series (on the native plane
    too: HAProxy's log lines are recorded through the same observation, read by the scrape)."""
    pushed = await api.push(api.package("once", source=FAILING_ON_ASK), target=ds.PUSH_TARGET_PUBLISHED)
    deployment_id = pushed.deployment.id
    await api.wait_state(deployment_id, ACTIVE)
    await routable(gateway, deployment_id)
    answers: list[tuple[str, int, float]] = []
    loads = gateway.forwarder.loads

    def sink(deployment: str, status_class: int, seconds: float) -> None:
        answers.append((deployment, status_class, seconds))
        loads[deployment].answer(status_class, seconds)

    gateway.forwarder.metrics.count_answers(sink)
    base = f"http://127.0.0.1:{gateway.http_port}"
    url = f"{base}/model/{pushed.model.id}/deployment/{deployment_id}/predict"
    async with (
        aiohttp.ClientSession() as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel,
    ):
        for body, status in [(b'"ok"', 200)] * 3 + [(b'"fail"', 500)]:
            async with session.post(url, data=body, headers=JSON) as response:
                assert response.status == status
        stub = inf_grpc.InferenceServiceStub(channel)
        target = inf.Target(deployment_id=deployment_id)
        # With the routing metadata: on the native plane, HAProxy's fast path (gRPC error: Trailers-Only).
        await stub.Predict(inf.PredictRequest(target=target, payload=b'"x"'), metadata=routing_metadata(target))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Predict(inf.PredictRequest(target=target, payload=b'"fail"'), metadata=routing_metadata(target))
        # Not forwarded: no deployment's answer, in neither.
        async with session.post(f"{base}/model/m_nothing/production/predict", data=b'"hi"', headers=JSON) as response:
            assert response.status == 404

    metrics = await scrape(f"{base}/metrics")
    assert sorted(c for d, c, _ in answers) == [2, 2, 2, 2, 5, 5]
    assert {d for d, _, _ in answers} == {deployment_id}
    labels = {"model_id": pushed.model.id, "deployment_id": deployment_id}
    requests = metrics.matching("slipway_inference_requests_total", **labels)
    assert sum(requests.values()) == len(answers)
    grpc_codes = {"OK": 1.0, failed.value.code().name: 1.0}
    assert metrics.matching("slipway_inference_requests_total", **labels, protocol="grpc") == {
        frozenset(
            {**labels, "environment": "published", "protocol": "grpc", "status_code": "", "grpc_code": code}.items()
        ): n
        for code, n in grpc_codes.items()
    }
    # The same elapsed seconds, computed once per request, went to both.
    durations = sum(metrics.matching("slipway_inference_duration_seconds_sum", **labels).values())
    assert durations == pytest.approx(sum(s for _, _, s in answers), rel=1e-9)
