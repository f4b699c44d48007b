"""Deployment figures: the gateway counts answers by status class and latency bucket in its
load reports, the controller sums them over gateways into its short in-memory history, and
MetricService.GetDeploymentMetrics serves it (over gRPC and Connect JSON)."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from controller.metric_history import HistorySettings, MetricHistory
from slipway import latency
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import metric_service_pb2 as mts
from slipway.v1 import metric_service_pb2_grpc as mts_grpc
from slipway.v1 import resources_pb2 as r
from tests.conftest import error_reason, start_gateway, stop_or_explain, wait_until

MODEL = """
import fastapi

class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        pass

    def predict(self, model_input):
        if model_input.get("fail") == "client":
            raise fastapi.HTTPException(status_code=422, detail="bad input")
        if model_input.get("fail") == "server":
            raise RuntimeError("the model broke")
        return {"ok": True}
"""


def histogram(*seconds: float) -> list[int]:
    counts = latency.empty()
    for value in seconds:
        counts[latency.bucket_of(value)] += 1
    return counts


def test_quantiles_interpolate_within_buckets_and_merge():
    assert latency.quantile(latency.empty(), 0.99) == 0.0
    counts = histogram(*([0.02] * 90), *([0.4] * 10))
    # 90 answers in (0.01, 0.025], 10 in (0.25, 0.5].
    assert 0.01 < latency.quantile(counts, 0.5) <= 0.025
    assert 0.01 < latency.quantile(counts, 0.9) <= 0.025
    assert 0.25 < latency.quantile(counts, 0.99) <= 0.5
    assert latency.quantile(histogram(1000.0), 0.5) == latency.BOUNDS_SECONDS[-1]  # the open last bucket


def test_history_sums_gateways_into_slots_and_steps():
    history = MetricHistory(HistorySettings(resolution_seconds=10, fine_slots=6, coarse_seconds=60, coarse_slots=4))
    t0 = 1_000_000.0
    history.record_answers("d", (3, 1, 0), histogram(0.02, 0.02, 0.02, 0.3), t0 + 1)  # gateway a
    history.record_answers("d", (2, 0, 1), histogram(0.02, 0.02, 5.0), t0 + 2)  # gateway b
    history.record_replicas("d", 1, 1, 2.0, t0 + 3)
    history.record_answers("d", (5, 0, 0), histogram(*[0.002] * 5), t0 + 12)
    history.record_replicas("d", 2, 1, 4.0, t0 + 13)
    step, points = history.points("d", 60, 0, t0 + 15)
    assert step == 10
    assert [p.responses for p in points] == [(5, 1, 1), (5, 0, 0)]
    assert points[0].error_rate == pytest.approx(1 / 7)
    assert (points[0].ready, points[0].desired, points[0].in_flight) == (1, 1, 2.0)
    assert (points[1].ready, points[1].desired) == (1, 2)
    assert points[1].width == pytest.approx(5)  # the last point is still filling
    # A wider step merges the histograms: p99 over both slots.
    step, [merged] = history.points("d", 60, 15, t0 + 15)
    assert step == 20 and merged.responses == (10, 1, 1)
    assert merged.quantile(0.99) > 2.5
    # A histogram of other buckets is not mixed in.
    history.record_answers("d", (1, 0, 0), [1, 2, 3], t0 + 14)
    assert sum(history.points("d", 60, 0, t0 + 15)[1][-1].buckets) == 5


def test_history_is_bounded_and_windows_past_an_hour_read_coarse_slots():
    settings = HistorySettings(
        resolution_seconds=10, fine_slots=6, coarse_seconds=60, coarse_slots=4, max_deployments=3
    )
    history = MetricHistory(settings)
    t0 = 6_000_000.0
    for second in range(0, 600, 5):
        history.record_answers("d", (1, 0, 0), histogram(0.01), t0 + second)
    fine_step, fine = history.points("d", 60, 0, t0 + 600)
    assert fine_step == 10 and len(fine) <= 7  # 6 slots kept, plus the one filling
    coarse_step, coarse = history.points("d", 240, 0, t0 + 600)
    assert coarse_step == 60 and 4 <= len(coarse) <= 5
    assert all(p.responses[0] == 12 for p in coarse[:-1])  # one answer every 5 s
    for name in ("a", "b"):
        history.record_replicas(name, 1, 1, 0.0, t0 + 600)
    # Full, and every history is live: a newcomer waits (the table never churns) ...
    history.record_replicas("c", 1, 1, 0.0, t0 + 601)
    assert len(history) == 3 and history.points("c", 60, 0, t0 + 601)[1] == []
    assert history.points("d", 60, 0, t0 + 601)[1]
    # ... until the one updated longest ago has had no figure for an hour.
    later = t0 + 600 + settings.fine_span + 1
    history.record_replicas("c", 1, 1, 0.0, later)
    assert len(history) == 3 and history.points("d", 60, 0, later)[1] == []
    assert history.points("c", 60, 0, later)[1]
    history.record_replicas("idle", 0, 0, 0.0, later)
    assert len(history) == 3  # an idle deployment takes no room


def test_cold_starts_count_transitions_from_no_ready_replica():
    history = MetricHistory()
    t0 = 7_000_000.0
    for offset, (desired, ready) in enumerate([(1, 0), (1, 1), (1, 1), (0, 0), (1, 0), (1, 1), (2, 1)]):
        history.record_replicas("d", desired, ready, 0.0, t0 + offset)
    _, points = history.points("d", 60, 60, t0 + 7)
    assert sum(p.cold_starts for p in points) == 2


@pytest.mark.timeout(120)
async def test_gateway_answers_reach_get_deployment_metrics_over_grpc_and_connect(controller, api, tmp_path):
    gateway = await start_gateway(controller)
    try:
        created = await api.push(api.package("figures", source=MODEL))
        deployment_id = created.deployment.id
        await api.wait_state(deployment_id, r.DEPLOYMENT_STATE_ACTIVE)
        url = f"http://127.0.0.1:{gateway.http_port}/model/{created.deployment.model_id}/deployment/{deployment_id}/predict"
        async with aiohttp.ClientSession() as http:
            for body, expected in [({}, 200)] * 4 + [({"fail": "client"}, 422), ({"fail": "server"}, 500)]:
                async with http.post(url, json=body) as response:
                    assert response.status == expected, await response.text()
            stub = mts_grpc.MetricServiceStub(api.channel)

            async def figures():
                answer = await stub.GetDeploymentMetrics(mts.GetDeploymentMetricsRequest(deployment_id=deployment_id))
                totals = [sum(getattr(p, f"responses_{c}") for p in answer.points) for c in ("2xx", "4xx", "5xx")]
                return answer if totals == [4, 1, 1] else None

            answer = await wait_until(figures, 15, "the answers in the metric history")
            assert list(answer.latency_bucket_bounds_seconds) == list(latency.BOUNDS_SECONDS)
            answered = [p for p in answer.points if p.responses_2xx]
            assert answered[0].latency_p99_seconds > 0 and len(answered[0].latency_bucket_counts) == latency.BUCKETS
            assert answer.points[-1].replicas_ready == 1 and answer.points[-1].replicas_desired == 1
            assert sum(p.cold_starts for p in answer.points) == 1

            # The same figures as JSON over HTTP (Connect), and a refusal with its reason.
            call = f"{controller.http_url}/slipway.v1.MetricService/GetDeploymentMetrics"
            body = {"deploymentId": deployment_id, "window": "600s", "step": "60s"}
            async with http.post(call, json=body) as response:
                assert response.status == 200
                figures_json = await response.json()
            assert figures_json["step"] == "60s"
            assert sum(int(p.get("responses2xx", 0)) for p in figures_json["points"]) == 4
            async with http.post(call, json={"deploymentId": deployment_id, "window": "90000s"}) as response:
                assert response.status == 400
                error = await response.json(content_type=None)
            assert error["details"][0]["debug"]["reason"] == "INVALID_METRICS_WINDOW"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetDeploymentMetrics(mts.GetDeploymentMetricsRequest(deployment_id="dep-nope"))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(refused.value) == "DEPLOYMENT_NOT_FOUND"
        # A deleted deployment keeps its history until it ages out.
        await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=deployment_id))
        kept = await stub.GetDeploymentMetrics(mts.GetDeploymentMetricsRequest(deployment_id=deployment_id))
        assert sum(p.responses_2xx for p in kept.points) == 4
    finally:
        await stop_or_explain(gateway.stop(), "gateway")
