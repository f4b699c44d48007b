"""MetricService: a deployment's recent figures from the controller's metric history
(controller/metric_history.py), fed by gateways' load reports and the reconciler."""

from __future__ import annotations

import time

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from controller.errors import InvalidArgument
from controller.keys import require_model_access
from controller.lifecycle import Lifecycle
from controller.metric_history import MetricHistory, Point
from controller.status import map_domain_errors
from slipway import latency
from slipway.v1 import metric_service_pb2 as mts
from slipway.v1 import metric_service_pb2_grpc as mts_grpc
from slipway.v1 import route_service_pb2 as rt

DEFAULT_WINDOW_SECONDS = 3600.0


def window_and_step(request: mts.GetDeploymentMetricsRequest, retention: float) -> tuple[float, float]:
    """The request's window and step in seconds, checked (unset window: an hour)."""
    window = request.window.ToTimedelta().total_seconds() if request.HasField("window") else DEFAULT_WINDOW_SECONDS
    step = request.step.ToTimedelta().total_seconds() if request.HasField("step") else 0.0
    if window <= 0:
        raise InvalidArgument("INVALID_METRICS_WINDOW", f"window must be positive, not {window:g}s")
    if window > retention:
        raise InvalidArgument(
            "INVALID_METRICS_WINDOW",
            f"window {window:g}s is longer than the {retention:g}s history the controller keeps",
        )
    if step < 0 or step > window:
        raise InvalidArgument(
            "INVALID_METRICS_STEP", f"step must be between 0 and the window ({window:g}s), not {step:g}s"
        )
    return window, step


def record_report(history: MetricHistory, request: rt.ReportLoadRequest, now: float) -> None:
    for load in request.loads:
        history.record_answers(
            load.deployment_id,
            (load.responses_2xx, load.responses_4xx, load.responses_5xx),
            load.latency_bucket_counts,
            now,
        )


def point_to_proto(point: Point) -> mts.MetricPoint:
    start = Timestamp()
    start.FromNanoseconds(int(point.start * 1e9))
    duration = Duration()
    duration.FromNanoseconds(int(point.width * 1e9))
    return mts.MetricPoint(
        start_time=start,
        duration=duration,
        responses_2xx=point.responses[0],
        responses_4xx=point.responses[1],
        responses_5xx=point.responses[2],
        latency_p50_seconds=point.quantile(0.5),
        latency_p90_seconds=point.quantile(0.9),
        latency_p99_seconds=point.quantile(0.99),
        latency_bucket_counts=point.buckets,
        in_flight=point.in_flight,
        replicas_ready=point.ready,
        replicas_desired=point.desired,
        cold_starts=point.cold_starts,
    )


@map_domain_errors
class MetricServicer(mts_grpc.MetricServiceServicer):
    def __init__(self, history: MetricHistory, lifecycle: Lifecycle) -> None:
        self.history = history
        self.lifecycle = lifecycle

    async def GetDeploymentMetrics(self, request, context):
        window, step = window_and_step(request, self.history.settings.retention)
        deployment = await self.lifecycle.find_deployment(request.deployment_id)
        require_model_access(deployment.model_id)
        step, points = self.history.points(deployment.id, window, step, time.time())
        answer_step = Duration()
        answer_step.FromNanoseconds(int(step * 1e9))
        return mts.GetDeploymentMetricsResponse(
            deployment_id=deployment.id,
            step=answer_step,
            points=[point_to_proto(p) for p in points],
            latency_bucket_bounds_seconds=latency.BOUNDS_SECONDS,
        )
