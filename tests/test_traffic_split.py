"""The gateway's choice among an environment's weighted deployments, and environment routes."""

from __future__ import annotations

import uuid

import pytest

from gateway import traffic_split
from gateway.errors import GatewayError
from gateway.routing import RouteIndex
from slipway.v1 import resources_pb2 as r
from slipway.v1 import route_service_pb2 as rt


def weighted(**weights: int) -> list[rt.WeightedDeployment]:
    return [rt.WeightedDeployment(deployment_id=d, weight=w) for d, w in weights.items()]


@pytest.mark.parametrize(
    "weights, expected_share_of_a",
    [({"a": 100}, 1.0), ({"a": 10, "b": 90}, 0.10), ({"a": 50, "b": 50}, 0.50), ({"a": 0, "b": 100}, 0.0)],
)
def test_shares_follow_the_weights(weights, expected_share_of_a):
    deployments = weighted(**weights)
    chosen = [traffic_split.choose(deployments, uuid.uuid4().hex) for _ in range(20_000)]
    assert set(chosen) <= set(weights)
    assert chosen.count("a") / len(chosen) == pytest.approx(expected_share_of_a, abs=0.015)


def test_the_same_request_id_always_lands_on_the_same_deployment():
    deployments = weighted(a=50, b=50)
    for request_id in (uuid.uuid4().hex for _ in range(200)):
        assert len({traffic_split.choose(deployments, request_id) for _ in range(5)}) == 1


def test_raising_a_share_only_moves_requests_towards_the_grown_deployment():
    """A request ID that went to the candidate at 10% still goes there at 50%: a ramp never
    bounces a caller's retries between the two."""
    ids = [uuid.uuid4().hex for _ in range(2_000)]
    at_10 = {i for i in ids if traffic_split.choose(weighted(candidate=10, previous=90), i) == "candidate"}
    at_50 = {i for i in ids if traffic_split.choose(weighted(candidate=50, previous=50), i) == "candidate"}
    assert at_10 <= at_50


def test_no_weight_means_no_deployment():
    assert traffic_split.choose([], "x") == ""
    assert traffic_split.choose(weighted(a=0, b=0), "x") == ""


def index_with(environments: list[rt.EnvironmentRoute]) -> RouteIndex:
    index = RouteIndex()
    deployments = {d.deployment_id for e in environments for d in e.deployments}
    index.apply(
        rt.WatchRoutesResponse(
            version=1,
            reset=True,
            models=[rt.ModelRoute(model_id="m1", model_name="m", environments=environments)],
            deployments=[
                rt.DeploymentRoute(deployment_id=d, model_id="m1", active=True, state=r.DEPLOYMENT_STATE_ACTIVE)
                for d in deployments
            ],
        )
    )
    return index


def test_named_environments_resolve_by_weight_and_misses_say_which():
    index = index_with(
        [
            rt.EnvironmentRoute(name="production", deployments=weighted(p=100)),
            rt.EnvironmentRoute(name="staging", deployments=weighted(s1=50, s2=50)),
            rt.EnvironmentRoute(name="empty"),
        ]
    )
    assert index.resolve("m1").deployment_id == "p"
    assert index.resolve("m", "", "production", "any").deployment_id == "p"
    chosen = {index.resolve("m1", "", "staging", uuid.uuid4().hex).deployment_id for _ in range(100)}
    assert chosen == {"s1", "s2"}
    for environment, reason in [("qa", "ENVIRONMENT_NOT_FOUND"), ("empty", "NO_DEPLOYMENT_IN_ENVIRONMENT")]:
        with pytest.raises(GatewayError) as refused:
            index.resolve("m1", "", environment, "x")
        assert refused.value.reason == reason
        assert refused.value.http_status == 404


def test_a_model_without_production_says_so():
    with pytest.raises(GatewayError) as refused:
        index_with([]).resolve("m1")
    assert refused.value.reason == "NO_PRODUCTION_DEPLOYMENT"
